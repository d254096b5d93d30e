//! Topic matching: routing keys and binding patterns are words split on `.`.
//!
//! Words are walked in place as `Option<&str>` cursors: `None` means no word is left,
//! `Some(rest)` means at least one is (possibly empty: `Some("")` is one empty word). Nothing
//! is allocated per match of an ordinary pattern.
//!
//! # Any number of `#`, in linear time
//! A pattern may hold any number of `#` groups, as in RabbitMQ. Tried naively, each group
//! multiplies the work by the key's length (a pattern with 50 groups would never finish).
//! Both matchers here are bounded by pattern words × key words instead:
//! - [`topic_matches`] retries only the latest `#`, the classic wildcard algorithm.
//! - [`TopicTrie::collect`] remembers, for each `#` node below another `#` node, the
//!   earliest key position it has been walked from during this publish: walked from there,
//!   it has covered every later position too, so each (node, position) pair is walked once.
//!   A `#` node with no `#` above it is reached at one position only and needs no memo, so a
//!   trie of ordinary patterns (at most one `#` group on any path) allocates nothing.

use std::collections::HashMap;

use super::queue_list::QueueList;
use super::table::QueueName;

/// Whether the topic binding key `pattern` matches `routing_key`, with RabbitMQ's rules.
///
/// ```
/// use sluice_broker::routing::topic_matches;
/// assert!(topic_matches("orders.*.eu", "orders.created.eu"));
/// assert!(topic_matches("orders.#", "orders"));
/// assert!(topic_matches("#.a.#.b.#", "x.a.y.b"));
/// assert!(!topic_matches("*", ""));
/// ```
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let mut pat = words(pattern);
    let mut key = words(routing_key);
    // After a mismatch, the latest `#` swallows one more key word and matching resumes just
    // after it. Retrying only the latest `#` suffices: what an earlier one would swallow
    // instead, the latest can swallow as well. Each `#` is retried at most once per key
    // word, so the work is at most pattern words × key words.
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
    /// Memo slots of the `#` nodes that have a `#` node above them.
    slots: MemoSlots,
}

#[derive(Debug, Clone, Default)]
struct TopicNode {
    /// Children by literal word.
    words: HashMap<Box<str>, TopicNode>,
    /// Child for `*`.
    star: Option<Box<TopicNode>>,
    /// Child for a group of `#`; never itself has a `#` child, as adjacent `#` are merged.
    hash: Option<Box<TopicNode>>,
    /// For a `#` node below another `#` node: its slot in a publish's [`Walk::memo`].
    memo_slot: Option<usize>,
    /// The queues of the bindings whose pattern ends here.
    queues: QueueList,
}

/// Hands out dense slot numbers, reusing freed ones, so a publish's memo stays as small as
/// the number of deep `#` nodes ever alive at once.
#[derive(Debug, Clone, Default)]
struct MemoSlots {
    len: usize,
    free: Vec<usize>,
}

impl MemoSlots {
    fn take(&mut self) -> usize {
        self.free.pop().unwrap_or_else(|| {
            self.len += 1;
            self.len - 1
        })
    }
}

/// One publish's walk of the trie.
struct Walk<'o> {
    key_len: usize,
    /// Per memo slot, the earliest position its `#` node has been walked from (`usize::MAX`:
    /// not yet). Empty, and unallocated, when the trie has no deep `#` node.
    memo: Vec<usize>,
    out: &'o mut Vec<QueueName>,
}

impl Walk<'_> {
    /// A cursor's position in the key: later cursors have larger positions.
    fn position(&self, rest: Option<&str>) -> usize {
        match rest {
            Some(r) => self.key_len - r.len(),
            None => self.key_len + 1,
        }
    }
}

impl TopicTrie {
    /// Adds a binding. Any pattern is valid.
    pub(super) fn insert(&mut self, pattern: &str, queue: &QueueName) {
        let mut node = &mut self.root;
        let mut prev_hash = false;
        let mut below_hash = false;
        let mut rest = words(pattern);
        while let Some(r) = rest {
            let (w, tail) = split_word(r);
            rest = tail;
            node = match w {
                "#" if prev_hash => node,
                "#" => {
                    let child = node.hash.get_or_insert_with(Box::default);
                    if below_hash && child.memo_slot.is_none() {
                        child.memo_slot = Some(self.slots.take());
                    }
                    below_hash = true;
                    &mut **child
                }
                "*" => &mut **node.star.get_or_insert_with(Box::default),
                _ => node.words.entry(w.into()).or_default(),
            };
            prev_hash = w == "#";
        }
        node.queues.add(queue);
    }

    /// Removes a binding added with the same pattern and queue, pruning emptied branches.
    pub(super) fn remove(&mut self, pattern: &str, queue: &str) {
        self.root
            .remove(words(pattern), false, queue, &mut self.slots.free);
    }

    /// Appends the queues of the bindings matching `routing_key`: one sorted run per matching
    /// node, whose number is returned (a queue may appear in several runs; a node gives at
    /// most one).
    pub(super) fn collect(&self, routing_key: &str, out: &mut Vec<QueueName>) -> usize {
        let mut walk = Walk {
            key_len: routing_key.len(),
            memo: vec![usize::MAX; self.slots.len],
            out,
        };
        self.root.collect(words(routing_key), &mut walk)
    }
}

impl TopicNode {
    fn is_empty(&self) -> bool {
        self.queues.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }

    fn remove(&mut self, rest: Option<&str>, prev_hash: bool, queue: &str, free: &mut Vec<usize>) {
        let Some(r) = rest else {
            self.queues.remove(queue);
            return;
        };
        let (w, tail) = split_word(r);
        match w {
            "#" if prev_hash => self.remove(tail, true, queue, free),
            "#" => {
                if let Some(child) = self.hash.as_deref_mut() {
                    child.remove(tail, true, queue, free);
                    if child.is_empty() {
                        free.extend(child.memo_slot);
                        self.hash = None;
                    }
                }
            }
            "*" => {
                if let Some(child) = self.star.as_deref_mut() {
                    child.remove(tail, false, queue, free);
                    if child.is_empty() {
                        self.star = None;
                    }
                }
            }
            _ => {
                if let Some(child) = self.words.get_mut(w) {
                    child.remove(tail, false, queue, free);
                    if child.is_empty() {
                        self.words.remove(w);
                    }
                }
            }
        }
    }

    fn collect(&self, rest: Option<&str>, walk: &mut Walk<'_>) -> usize {
        let mut runs = 0;
        match rest {
            None if !self.queues.is_empty() => {
                self.queues.extend_into(walk.out);
                runs += 1;
            }
            None => {}
            Some(r) => {
                let (w, tail) = split_word(r);
                if let Some(child) = self.words.get(w) {
                    runs += child.collect(tail, walk);
                }
                if let Some(child) = &self.star {
                    runs += child.collect(tail, walk);
                }
            }
        }
        if let Some(hash) = &self.hash {
            runs += hash.collect_hash(rest, walk);
        }
        runs
    }

    /// Walks this `#` node from every position from `rest` on: `#` swallows no word, then one
    /// more at a time, up to all of them. Positions already walked in this publish are not
    /// walked again.
    fn collect_hash(&self, rest: Option<&str>, walk: &mut Walk<'_>) -> usize {
        let start = walk.position(rest);
        let walked_from = match self.memo_slot {
            Some(slot) => {
                let walked_from = walk.memo[slot];
                walk.memo[slot] = start.min(walked_from);
                walked_from
            }
            None => usize::MAX,
        };
        let mut runs = 0;
        let mut swallowed_to = rest;
        while walk.position(swallowed_to) < walked_from {
            runs += self.collect(swallowed_to, walk);
            match swallowed_to {
                Some(r) => swallowed_to = split_word(r).1,
                None => break,
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

    /// The shared table of tests/data/routing_exact (also run end to end by
    /// tests/tests/routing_exact.rs): (pattern, key, matches, why).
    fn case_table() -> Vec<(String, String, bool, String)> {
        let doc: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/data/routing_exact/topic_cases.json"
        ))
        .unwrap();
        doc["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap().to_owned();
                (
                    text("pattern"),
                    text("key"),
                    c["matches"].as_bool().unwrap(),
                    text("why"),
                )
            })
            .collect()
    }

    #[test]
    fn the_shared_case_table_matches_one_pattern_at_a_time() {
        let cases = case_table();
        assert!(cases.len() >= 200, "{} cases", cases.len());
        for (pattern, key, want, why) in &cases {
            let ctx = format!("{pattern:?} vs {key:?} ({why})");
            assert_eq!(reference(pattern, key), *want, "reference: {ctx}");
            assert_eq!(topic_matches(pattern, key), *want, "matcher: {ctx}");
            assert_eq!(trie_matches(pattern, key), *want, "trie: {ctx}");
        }
    }

    #[test]
    fn the_shared_case_table_matches_with_every_pattern_in_one_trie() {
        let cases = case_table();
        let mut trie = TopicTrie::default();
        for (pattern, ..) in &cases {
            trie.insert(pattern, &QueueName::from(pattern.as_str()));
        }
        for (pattern, key, want, why) in &cases {
            let mut out = Vec::new();
            trie.collect(key, &mut out);
            assert_eq!(
                out.iter().any(|q| **q == **pattern),
                *want,
                "{pattern:?} vs {key:?} ({why})"
            );
        }
    }

    #[test]
    fn deep_hash_nodes_get_memo_slots_that_removal_frees_for_reuse() {
        let mut trie = TopicTrie::default();
        // One `#` group on the path: no memo.
        trie.insert("a.#.b", &"q1".into());
        trie.insert("#.#.x", &"q1".into());
        assert_eq!(trie.slots.len, 0);
        trie.insert("#.a.#.b.#", &"q2".into());
        assert_eq!(trie.slots.len, 2);
        trie.remove("#.a.#.b.#", "q2");
        assert_eq!(trie.slots.free.len(), 2);
        trie.insert("#.c.#", &"q3".into());
        assert_eq!((trie.slots.len, trie.slots.free.len()), (2, 1));
        let mut out = Vec::new();
        trie.collect("c", &mut out);
        assert_eq!(out, [QueueName::from("q3")]);
    }

    #[test]
    fn fifty_hash_groups_against_a_long_key_are_walked_once_per_position() {
        // 50 `#` groups separated by empty words, then a word the key lacks: every split of
        // the key among the groups fails, which the naive walk would try one by one.
        let mut words = vec!["#"; 50].join("..");
        words.push_str(".z");
        let key = ".".repeat(199);
        let mut trie = TopicTrie::default();
        trie.insert(&words, &"q".into());
        let mut out = Vec::new();
        assert_eq!(trie.collect(&key, &mut out), 0);
        assert!(!topic_matches(&words, &key));
        let matching = format!("{key}.z");
        assert_eq!(trie.collect(&matching, &mut out), 1);
        assert!(topic_matches(&words, &matching));
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
            let patterns: Vec<String> = patterns.iter().map(|p| p.join(".")).collect();
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
