//! Errors become text only at the edges (cloud-hypervisor's rule): each error type says
//! what failed and carries its cause as `#[source]`, and where a message leaves the
//! process (a step's error, an HTTP body, a log line) [`chain`] joins the whole chain.

use std::error::Error;

/// `e`'s message, then each cause's, joined by ": ". A cause whose message its parent
/// already ends with (a `transparent` wrapper, an error that prints its source) is not
/// repeated.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !m.is_empty() && !out.ends_with(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = c.source();
    }
    out
}

/// A boxed cause, for errors whose source may be of several types.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the seed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(chain(&e), "reading the seed: disk full");
    }
}
