# mqttlb container image: one static binary on an empty base, non-root.
#
# Built from local files only (this project's machines have no image
# registry): the binary is compiled on the host, statically linked, and
# copied into `scratch`. The build context is a directory holding just the
# binary and the user database; `scripts/docker-build` prepares it and
# builds:
#
#   scripts/docker-build [TAG]          # default tag: mqttlb:dev
#
# Runtime contract: config at /etc/mqttlb/mqttlb.toml, certificates mounted
# (e.g. /etc/mqttlb/certs), TLS on 8883, admin (metrics, health) on 9100 —
# the config must set `[admin] listen = "0.0.0.0:9100"` to publish it.
# SIGTERM drains connections and exits 0.
FROM scratch
COPY mqttlb /usr/local/bin/mqttlb
COPY passwd /etc/passwd
COPY group /etc/group
USER 65532:65532
EXPOSE 8883 9100
# No shell or curl in the image: the binary probes its own admin server.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/mqttlb", "health", "http://127.0.0.1:9100/healthz"]
ENTRYPOINT ["/usr/local/bin/mqttlb"]
CMD ["proxy", "--config", "/etc/mqttlb/mqttlb.toml"]
