//! The proxy's CONNECT peek on arbitrary bytes: never panics, and keeps its
//! contract on every prefix (no `Incomplete(0)`, no verdict before the
//! bytes it asked for, verdicts never change as bytes arrive).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttlb::mqtt::{Peek, peek_connect};

fuzz_target!(|data: &[u8]| {
    let limit = 4096;
    let mut settled: Option<Result<usize, mqttlb::mqtt::ConnectError>> = None;
    let mut need_until = 0usize;
    for end in 0..=data.len().min(512) {
        let v = match peek_connect(&data[..end], limit) {
            Ok(Peek::Incomplete(n)) => {
                assert!(n >= 1);
                assert!(settled.is_none(), "a verdict went back to incomplete");
                need_until = need_until.max(end + n);
                continue;
            }
            Ok(Peek::Complete { len, .. }) => {
                assert!(len <= end);
                Ok(len)
            }
            Err(e) => Err(e),
        };
        assert!(end >= need_until, "a verdict before the bytes asked for");
        match &settled {
            Some(s) => assert_eq!(s, &v, "the verdict changed"),
            None => settled = Some(v),
        }
    }
});
