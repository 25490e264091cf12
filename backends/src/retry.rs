//! The one way a backend retries: exponential backoff with jitter, a bounded number of attempts or a bounded
//! wait (the `backon` crate, as the binary's `util::backoff`).

use std::time::Duration;

/// `attempts` tries in all, the first retry after `first`, each wait doubling, with jitter.
pub fn attempts(first: Duration, attempts: u32) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1) as usize)
}

/// Polls every `every` (with jitter) for at most `within`.
pub fn poll(every: Duration, within: Duration) -> backon::ConstantBuilder {
    let times = within.as_millis() / every.as_millis().max(1);
    backon::ConstantBuilder::default()
        .with_delay(every)
        .with_jitter()
        .with_max_times(usize::try_from(times).unwrap_or(usize::MAX))
}
