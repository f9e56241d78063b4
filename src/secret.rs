//! Secrets read from configuration (passwords, the mesh secret).

/// A secret that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Compare without an early exit on the first differing byte.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let s = self.0.as_bytes();
        s.len() == candidate.len()
            && s.iter()
                .zip(candidate)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}
