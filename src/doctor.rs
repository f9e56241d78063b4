//! `mqttlb doctor`: the operating-system limits that cap a stress test or a
//! production node, each with what N connections need and how to change it.
//! (Being written.)

/// Flags of `mqttlb doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Connections the node (or the load generator) must carry.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also read the limits of this running process (e.g. a running mqttlb).
    #[arg(long)]
    pub pid: Option<u32>,
}

/// Run `mqttlb doctor`; returns the exit code.
pub fn main(_args: DoctorArgs) -> u8 {
    0
}
