//! The pod's hostname as kubelet makes it fit the kernel: a UTS name holds at most 64
//! bytes, and a longer one would fail the pod at sethostname.

use tracing::warn;

/// Longest hostname kubelet gives a pod: 64 bytes in the kernel, less the terminating NUL.
pub const HOSTNAME_MAX_LEN: usize = 63;

/// `hostname`, cut as kubelet's truncatePodHostnameIfNeeded cuts it when it is longer than
/// [`HOSTNAME_MAX_LEN`]: to that many bytes (on a character boundary), then without
/// trailing '-' and '.'. A cut is logged with the pod's name; it never fails (should the
/// trim leave nothing, the plain cut is kept).
pub fn truncate_pod_hostname(pod: &str, hostname: &str) -> String {
    if hostname.len() <= HOSTNAME_MAX_LEN {
        return hostname.to_owned();
    }
    let mut end = HOSTNAME_MAX_LEN;
    while !hostname.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &hostname[..end];
    let trimmed = cut.trim_end_matches(['-', '.']);
    let truncated = if trimmed.is_empty() { cut } else { trimmed };
    warn!(
        pod = %pod,
        hostname = %hostname,
        truncated = %truncated,
        max_len = HOSTNAME_MAX_LEN,
        "pod hostname too long, truncated"
    );
    truncated.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hostnames_are_kept() {
        assert_eq!(truncate_pod_hostname("p", "web-0"), "web-0");
        assert_eq!(truncate_pod_hostname("p", ""), "");
        let max = "a".repeat(63);
        assert_eq!(truncate_pod_hostname("p", &max), max);
    }

    #[test]
    fn long_hostnames_are_cut_to_63_bytes() {
        let long = "a".repeat(64);
        assert_eq!(truncate_pod_hostname("p", &long), "a".repeat(63));
        let long = "b".repeat(253);
        assert_eq!(truncate_pod_hostname("p", &long), "b".repeat(63));
    }

    #[test]
    fn trailing_dashes_and_dots_of_the_cut_are_trimmed() {
        let name = format!("{}-.-{}", "a".repeat(60), "b".repeat(40));
        assert_eq!(truncate_pod_hostname("p", &name), "a".repeat(60));
        // Dashes and dots before the end stay.
        let name = format!("{}.x-y{}", "a".repeat(58), "z".repeat(40));
        assert_eq!(
            truncate_pod_hostname("p", &name),
            format!("{}.x-yz", "a".repeat(58))
        );
    }

    #[test]
    fn a_cut_never_splits_a_character_nor_comes_out_empty() {
        // 'é' is two bytes: byte 63 falls inside the 32nd one.
        let name = "é".repeat(40);
        let t = truncate_pod_hostname("p", &name);
        assert_eq!(t, "é".repeat(31));
        assert!(t.len() <= HOSTNAME_MAX_LEN);
        let dashes = "-".repeat(80);
        assert_eq!(truncate_pod_hostname("p", &dashes), "-".repeat(63));
    }
}
