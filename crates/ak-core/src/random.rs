//! Random identifiers (sandbox ids, secret placeholders, API tokens), drawn with the
//! `getrandom` system call.
//!
//! `uuid::Uuid::new_v4` draws through the `getrandom` crate, which in our static
//! executables cannot find libc's `getrandom` (it looks it up dynamically) and falls back
//! to opening `/dev/random`, polling it and reading `/dev/urandom`: six system calls,
//! ~22 µs of every CLI command that names a sandbox (perf probes, docs/benchmarks.md).

/// A version 4 UUID from the kernel's random source (`getrandom(2)`, which waits only
/// until the pool is initialised at boot, as `/dev/random`'s poll did).
pub fn uuid_v4() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    match fill(&mut bytes) {
        Ok(()) => uuid::Builder::from_random_bytes(bytes).into_uuid(),
        // A kernel without the call (before 3.17) or a filter refusing it: the crate's
        // own fallback.
        Err(_) => uuid::Uuid::new_v4(),
    }
}

fn fill(mut buffer: &mut [u8]) -> rustix::io::Result<()> {
    while !buffer.is_empty() {
        match rustix::rand::getrandom(&mut *buffer, rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => return Err(rustix::io::Errno::IO),
            Ok(n) => buffer = &mut buffer[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let first = uuid_v4();
        let second = uuid_v4();
        assert_eq!(first.get_version_num(), 4);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(first, second);
        assert_ne!(first, uuid::Uuid::nil());
    }
}
