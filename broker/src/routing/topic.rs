//! Topic matching: routing keys and binding patterns are words split on `.`.
//!
//! Words are walked in place as `Option<&str>` cursors: `None` means no word is left,
//! `Some(rest)` means at least one is (possibly empty: `Some("")` is one empty word). Nothing
//! is allocated per match.

use std::collections::HashMap;

use super::queue_list::QueueList;
use super::table::QueueName;

/// The most groups of `#` a topic binding key may have. Adjacent `#` words form one group
/// (`#.#` means the same as `#`). Each further group multiplies the work of every publish by
/// the length of the routing key, so more are refused, as RabbitMQ does.
pub const MAX_TOPIC_HASH_GROUPS: usize = 2;

/// Whether the topic binding key `pattern` matches `routing_key`, with RabbitMQ's rules.
///
/// ```
/// use sluice_broker::routing::topic_matches;
/// assert!(topic_matches("orders.*.eu", "orders.created.eu"));
/// assert!(topic_matches("orders.#", "orders"));
/// assert!(!topic_matches("*", ""));
/// ```
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let mut pat = words(pattern);
    let mut key = words(routing_key);
    // After a mismatch, the latest `#` swallows one more key word and matching resumes just
    // after it. Retrying only the latest `#` suffices: what an earlier one would swallow
    // instead, the latest can swallow as well.
    let mut resume: Option<(Option<&str>, Option<&str>)> = None;
    loop {
        match (pat, key) {
            (None, None) => return true,
            (Some(p), _) => {
                let (pw, ptail) = split_word(p);
                if pw == "#" {
                    resume = Some((ptail, key));
                    pat = ptail;
                    continue;
                }
                if let Some(k) = key {
                    let (kw, ktail) = split_word(k);
                    if pw == "*" || pw == kw {
                        pat = ptail;
                        key = ktail;
                        continue;
                    }
                }
            }
            (None, Some(_)) => {}
        }
        match resume {
            Some((after_hash, Some(swallowed_to))) => {
                let next = split_word(swallowed_to).1;
                resume = Some((after_hash, next));
                pat = after_hash;
                key = next;
            }
            _ => return false,
        }
    }
}

/// Checks a topic binding key before it is bound.
pub(super) fn validate_pattern(pattern: &str) -> Result<(), String> {
    let mut groups = 0;
    let mut prev_hash = false;
    let mut rest = words(pattern);
    while let Some(r) = rest {
        let (w, tail) = split_word(r);
        let hash = w == "#";
        if hash && !prev_hash {
            groups += 1;
        }
        prev_hash = hash;
        rest = tail;
    }
    if groups > MAX_TOPIC_HASH_GROUPS {
        return Err(format!(
            "topic binding key '{pattern}' has {groups} groups of '#', at most \
             {MAX_TOPIC_HASH_GROUPS} are allowed"
        ));
    }
    Ok(())
}

/// The words of `s`. RabbitMQ splits `""` into no words at all, not one empty word.
#[inline]
fn words(s: &str) -> Option<&str> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// The first word of a non-exhausted cursor, and the cursor after it.
#[inline]
fn split_word(rest: &str) -> (&str, Option<&str>) {
    match rest.bytes().position(|b| b == b'.') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

/// The topic bindings of one exchange, as a trie over pattern words (like RabbitMQ's): a
/// publish walks only the branches its words can match, whatever the number of bindings.
#[derive(Debug, Clone, Default)]
pub(super) struct TopicTrie {
    root: TopicNode,
}

#[derive(Debug, Clone, Default)]
struct TopicNode {
    /// Children by literal word.
    words: HashMap<Box<str>, TopicNode>,
    /// Child for `*`.
    star: Option<Box<TopicNode>>,
    /// Child for a group of `#`; never itself has a `#` child, as adjacent `#` are merged.
    hash: Option<Box<TopicNode>>,
    /// The queues of the bindings whose pattern ends here.
    queues: QueueList,
}

impl TopicTrie {
    /// Adds a binding; `pattern` must have passed [`validate_pattern`].
    pub(super) fn insert(&mut self, pattern: &str, queue: &QueueName) {
        let mut node = &mut self.root;
        let mut prev_hash = false;
        let mut rest = words(pattern);
        while let Some(r) = rest {
            let (w, tail) = split_word(r);
            rest = tail;
            node = match w {
                "#" if prev_hash => node,
                "#" => &mut **node.hash.get_or_insert_with(Box::default),
                "*" => &mut **node.star.get_or_insert_with(Box::default),
                _ => node.words.entry(w.into()).or_default(),
            };
            prev_hash = w == "#";
        }
        node.queues.add(queue);
    }

    /// Removes a binding added with the same pattern and queue, pruning emptied branches.
    pub(super) fn remove(&mut self, pattern: &str, queue: &str) {
        self.root.remove(words(pattern), false, queue);
    }

    /// Appends the queues of the bindings matching `routing_key`: one sorted run per matching
    /// node, whose number is returned (a queue may appear in several runs).
    pub(super) fn collect(&self, routing_key: &str, out: &mut Vec<QueueName>) -> usize {
        self.root.collect(words(routing_key), out)
    }
}

impl TopicNode {
    fn is_empty(&self) -> bool {
        self.queues.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn remove(&mut self, rest: Option<&str>, prev_hash: bool, queue: &str) {
        let Some(r) = rest else {
            self.queues.remove(queue);
            return;
        };
        let (w, tail) = split_word(r);
        match w {
            "#" if prev_hash => self.remove(tail, true, queue),
            "#" => {
                if let Some(child) = self.hash.as_deref_mut() {
                    child.remove(tail, true, queue);
                    if child.is_empty() {
                        self.hash = None;
                    }
                }
            }
            "*" => {
                if let Some(child) = self.star.as_deref_mut() {
                    child.remove(tail, false, queue);
                    if child.is_empty() {
                        self.star = None;
                    }
                }
            }
            _ => {
                if let Some(child) = self.words.get_mut(w) {
                    child.remove(tail, false, queue);
                    if child.is_empty() {
                        self.words.remove(w);
                    }
                }
            }
        }
    }

    fn collect(&self, rest: Option<&str>, out: &mut Vec<QueueName>) -> usize {
        let mut runs = 0;
        match rest {
            None if !self.queues.is_empty() => {
                self.queues.extend_into(out);
                runs += 1;
            }
            None => {}
            Some(r) => {
                let (w, tail) = split_word(r);
                if let Some(child) = self.words.get(w) {
                    runs += child.collect(tail, out);
                }
                if let Some(child) = &self.star {
                    runs += child.collect(tail, out);
                }
            }
        }
        if let Some(hash) = &self.hash {
            // `#` swallows no word, then one more at a time, up to all of them.
            let mut swallowed_to = rest;
            loop {
                runs += hash.collect(swallowed_to, out);
                match swallowed_to {
                    Some(r) => swallowed_to = split_word(r).1,
                    None => break,
                }
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, on words split the way RabbitMQ splits them.
    fn reference(pattern: &str, key: &str) -> bool {
        fn split(s: &str) -> Vec<&str> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('.').collect()
            }
        }
        fn go(p: &[&str], k: &[&str]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((&"#", prest)) => (0..=k.len()).any(|i| go(prest, &k[i..])),
                Some((&"*", prest)) => !k.is_empty() && go(prest, &k[1..]),
                Some((w, prest)) => k.first() == Some(w) && go(prest, &k[1..]),
            }
        }
        go(&split(pattern), &split(key))
    }

    fn trie_matches(pattern: &str, key: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.insert(pattern, &"q".into());
        let mut out = Vec::new();
        trie.collect(key, &mut out);
        !out.is_empty()
    }

    /// (pattern, routing key, matches) following RabbitMQ: "" is zero words, empty words are
    /// kept, `*` is one word (possibly empty), `#` zero or more.
    const CASES: &[(&str, &str, bool)] = &[
        // literals
        ("a.b.c", "a.b.c", true),
        ("a.b.c", "a.b", false),
        ("a.b", "a.b.c", false),
        ("a.b.c", "a.x.c", false),
        ("a*", "ab", false),
        ("a*", "a*", true),
        // `*`: exactly one word
        ("*", "a", true),
        ("*", "a.b", false),
        ("*.b", "a.b", true),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.c", false),
        ("a.*", "a.", true),
        ("*.a", ".a", true),
        ("*.*", ".", true),
        ("*", ".", false),
        ("a.*.c", "a..c", true),
        // `#`: zero or more words
        ("#", "a", true),
        ("#", "a.b.c", true),
        ("#", ".", true),
        ("a.#", "a", true),
        ("a.#", "a.b.c", true),
        ("a.#", "b.a", false),
        ("#.c", "c", true),
        ("#.c", "a.b.c", true),
        ("#.c", "a.b.c.d", false),
        ("a.#.b", "a.b", true),
        ("a.#.b", "a.x.b", true),
        ("a.#.b", "a.x.y.b", true),
        ("a.#.b", "a.x.y", false),
        ("a.#.b", "a.b.b", true),
        ("a.#.b.#", "a.b", true),
        ("a.#.b.#", "a.x.b.y.z", true),
        ("a.#.b.#", "a.x.c", false),
        ("#.a.#", "a", true),
        ("#.a.#", "x.a.y", true),
        ("#.a.#", "x.y", false),
        // several `#`, `#` with `*`
        ("#.#", "", true),
        ("#.#", "a", true),
        ("#.#", "a.b.c", true),
        ("#.#.#", "a.b", true),
        ("#.*", "", false),
        ("#.*", "a", true),
        ("#.*", "a.b.c", true),
        ("*.#", "", false),
        ("*.#", "a", true),
        ("*.#", "a.b", true),
        ("#.*.#", "a", true),
        ("#.*.#", "", false),
        ("*.#.*", "a", false),
        ("*.#.*", "a.b", true),
        ("*.#.*", "a.b.c.d", true),
        // the empty routing key is zero words
        ("", "", true),
        ("#", "", true),
        ("*", "", false),
        ("", "a", false),
        ("", ".", false),
        ("a", "", false),
        // empty words: leading, trailing, doubled dots
        ("a..b", "a..b", true),
        ("a..b", "a.b", false),
        ("a.*.b", "a..b", true),
        ("a.#.b", "a..b", true),
        (".a", ".a", true),
        (".a", "a", false),
        ("a.", "a.", true),
        ("a.", "a", false),
        ("a.#", "a.", true),
        ("#.a", ".a", true),
        (".", ".", true),
        (".", "", false),
        ("#.", "a.", true),
        ("#.", "a", false),
    ];

    #[test]
    fn topic_table_matches_rabbitmq_rules() {
        for &(pattern, key, want) in CASES {
            assert_eq!(
                reference(pattern, key),
                want,
                "reference: {pattern:?} vs {key:?}"
            );
            assert_eq!(
                topic_matches(pattern, key),
                want,
                "matcher: {pattern:?} vs {key:?}"
            );
            assert_eq!(
                trie_matches(pattern, key),
                want,
                "trie: {pattern:?} vs {key:?}"
            );
        }
    }

    #[test]
    fn hash_groups_are_limited_but_adjacent_hashes_merge() {
        assert!(validate_pattern("#").is_ok());
        assert!(validate_pattern("#.#.#").is_ok());
        assert!(validate_pattern("a.#.b.#").is_ok());
        assert!(validate_pattern("#.*.#").is_ok());
        assert!(validate_pattern("#.a.#.b.#").is_err());
        assert!(validate_pattern("").is_ok());
    }

    #[test]
    fn trie_removal_prunes_and_keeps_other_bindings() {
        let mut trie = TopicTrie::default();
        trie.insert("a.#.b", &"q1".into());
        trie.insert("a.#.#.b", &"q2".into());
        trie.insert("a.#.b", &"q3".into());
        trie.insert("a.*", &"q3".into());
        let mut out = Vec::new();
        // "a.#.b" and "a.#.#.b" share a node, reached once.
        assert_eq!(trie.collect("a.x.b", &mut out), 1);
        assert_eq!(out, ["q1", "q2", "q3"].map(QueueName::from));
        trie.remove("a.#.b", "q1");
        trie.remove("a.#.#.b", "q2");
        trie.remove("a.#.b", "q3");
        out.clear();
        assert_eq!(trie.collect("a.b", &mut out), 1);
        assert_eq!(out, [QueueName::from("q3")]);
        trie.remove("a.*", "q3");
        assert!(trie.root.is_empty());
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", ""])
    }

    fn pattern_word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "*", "#"])
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            pattern in prop::collection::vec(pattern_word(), 0..7),
            key in prop::collection::vec(word(), 0..8),
        ) {
            let (pattern, key) = (pattern.join("."), key.join("."));
            prop_assert_eq!(topic_matches(&pattern, &key), reference(&pattern, &key),
                "{:?} vs {:?}", pattern, key);
        }

        #[test]
        fn trie_agrees_with_reference(
            patterns in prop::collection::vec(prop::collection::vec(pattern_word(), 0..6), 1..12),
            keys in prop::collection::vec(prop::collection::vec(word(), 0..7), 1..8),
            removed in prop::collection::vec(any::<bool>(), 12),
        ) {
            let patterns: Vec<String> = patterns
                .iter()
                .map(|p| p.join("."))
                .filter(|p| validate_pattern(p).is_ok())
                .collect();
            let mut trie = TopicTrie::default();
            // Queues repeat, so that a queue can be reached through several nodes.
            let queue = |i: usize| QueueName::from(format!("q{}", i % 5));
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, &queue(i));
            }
            // Remove some again so that pruning is exercised too.
            let mut live = Vec::new();
            for (i, p) in patterns.iter().enumerate() {
                if removed[i] {
                    trie.remove(p, &queue(i));
                } else {
                    live.push(i);
                }
            }
            for key in keys.iter().map(|k| k.join(".")) {
                let mut got = Vec::new();
                trie.collect(&key, &mut got);
                got.sort();
                got.dedup();
                let mut want: Vec<QueueName> = live
                    .iter()
                    .filter(|&&i| reference(&patterns[i], &key))
                    .map(|&i| queue(i))
                    .collect();
                want.sort();
                want.dedup();
                prop_assert_eq!(got, want, "key {:?} patterns {:?}", key, patterns);
            }
        }
    }
}
