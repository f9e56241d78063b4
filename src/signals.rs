//! Process signals of the long-running commands: SIGTERM and SIGINT (Ctrl-C
//! on Windows) stop, SIGHUP reloads, SIGUSR1 re-opens log files (Unix).

use std::future::Future;

use tracing::{error, info};

/// Wait until a stop signal arrives and return its name; every SIGHUP
/// before it runs `reload` (awaited: reloads never overlap), every SIGUSR1
/// `reopen` (log files, for logrotate; Unix only). A second stop
/// signal is the caller's to ignore (the drain deadline bounds shutdown).
/// Without signal handlers (they could not be installed) this never
/// returns: stop with SIGKILL.
pub async fn wait_for_stop<F, Fut>(mut reload: F, mut reopen: impl FnMut()) -> &'static str
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) else {
            error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = int.recv() => return "SIGINT",
                _ = hup.recv() => {
                    info!("SIGHUP: reloading the configuration");
                    reload().await;
                }
                _ = usr1.recv() => {
                    info!("SIGUSR1: re-opening log files");
                    reopen();
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (&mut reload, &mut reopen);
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(e) => {
                error!(error = %e, "cannot listen for Ctrl-C; stop the process another way");
                std::future::pending().await
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn send(signal: &str) {
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Real signals to this test process: SIGHUP reloads (as often as it
    /// comes), SIGUSR1 re-opens, SIGTERM ends the wait. The handlers are installed before the
    /// first signal is sent (the first reload proves it).
    #[tokio::test]
    async fn hup_reloads_and_term_stops() {
        let reloads = Arc::new(AtomicUsize::new(0));
        let reopens = Arc::new(AtomicUsize::new(0));
        let waiting = tokio::spawn({
            let reloads = reloads.clone();
            let reopens = reopens.clone();
            async move {
                wait_for_stop(
                    || {
                        reloads.fetch_add(1, Ordering::SeqCst);
                        async {}
                    },
                    || {
                        reopens.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .await
            }
        });
        // Until the handlers are installed a SIGHUP would end the process,
        // so wait for the task to be parked in `select!` first.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        for expected in 1..=2 {
            send("-HUP");
            while reloads.load(Ordering::SeqCst) < expected {
                assert!(tokio::time::Instant::now() < deadline, "no reload");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        send("-USR1");
        while reopens.load(Ordering::SeqCst) < 1 {
            assert!(tokio::time::Instant::now() < deadline, "no re-open");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        send("-TERM");
        let name = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("stopped")
            .unwrap();
        assert_eq!(name, "SIGTERM");
    }
}
