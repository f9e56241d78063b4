//! `mqttlb bench calibrate` (being written).

use super::BenchArgs;

pub async fn run(_args: &BenchArgs) -> u8 {
    eprintln!("mqttlb bench calibrate: not yet");
    1
}
