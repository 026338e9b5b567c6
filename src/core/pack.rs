//! Packing items into calls that a platform limits both by count and by
//! total size (EventBridge `PutEvents`, SQS `SendMessageBatch`).

/// Cuts `items` into consecutive runs of at most `max_count` items whose
/// `size`s add up to at most `max_bytes` (a single larger item still gets a
/// run of its own), in order.
pub fn by_count_and_size<T>(items: &[T], max_count: usize, max_bytes: usize, size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let count = i - start;
        let len = size(item);
        if count > 0 && (count == max_count || bytes + len > max_bytes) {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_hold_at_most_the_count_and_the_bytes() {
        let lens = |v: &[usize], n, max| {
            by_count_and_size(v, n, max, |x| *x)
                .iter()
                .map(|r| r.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(&[100, 100, 900, 50, 50], 10, 1000), vec![2, 3]);
        assert_eq!(lens(&[1; 25], 10, 1000), vec![10, 10, 5]);
        assert_eq!(lens(&[2000, 1], 10, 1000), vec![1, 1], "an oversized item alone");
        assert!(lens(&[], 10, 1000).is_empty());
    }
}
