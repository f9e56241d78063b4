//! Subscriptions and retained messages: who receives a published message.
//!
//! Pure data structure (no I/O, no sessions): [`Router::route`] returns the
//! deliveries per client id; the broker hands them to sessions.
//!
//! Plain subscriptions live in a topic trie (one level per node, `+` and
//! `#` as ordinary child keys), so routing a message costs the depth of its
//! topic times the wildcard branches, not the number of filters. Shared
//! groups are few and scanned.

use std::collections::HashMap;
use std::sync::Arc;

use super::Message;
use crate::mqtt::codec::SubOptions;
use crate::mqtt::topic::{self, matches};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub opts: SubOptions,
    pub id: Option<u32>,
}

/// Where one message goes for one client: highest QoS of its matching
/// subscriptions, retain flag as published if any asked for it, and every
/// subscription identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub client_id: Arc<str>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(Arc<str>, Sub)>,
    next: usize,
}

/// One topic level of the subscription trie.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    /// Subscribers whose filter ends at this node.
    subs: HashMap<Arc<str>, Sub>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty()
    }

    fn insert(&mut self, filter: &str, client: &str, sub: Sub) -> bool {
        let mut node = self;
        for level in filter.split('/') {
            node = node.children.entry(level.to_string()).or_default();
        }
        node.subs.insert(Arc::from(client), sub).is_none()
    }

    /// Remove a subscription, pruning emptied nodes.
    fn remove(&mut self, levels: &[&str], client: &str) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return self.subs.remove(client).is_some();
        };
        let Some(child) = self.children.get_mut(*first) else {
            return false;
        };
        let removed = child.remove(rest, client);
        if child.is_empty() {
            self.children.remove(*first);
        }
        removed
    }

    /// Visit every subscription matching `levels`. `top` is true at the
    /// first level, where `$` topics hide from wildcards [MQTT-4.7.2-1].
    fn visit(&self, levels: &[&str], top: bool, f: &mut dyn FnMut(&Arc<str>, &Sub)) {
        let Some((first, rest)) = levels.split_first() else {
            self.subs.iter().for_each(|(c, s)| f(c, s));
            // "a/#" also matches "a".
            if let Some(hash) = self.children.get("#") {
                hash.subs.iter().for_each(|(c, s)| f(c, s));
            }
            return;
        };
        if !(top && first.starts_with('$')) {
            if let Some(hash) = self.children.get("#") {
                hash.subs.iter().for_each(|(c, s)| f(c, s));
            }
            if let Some(plus) = self.children.get("+") {
                plus.visit(rest, false, f);
            }
        }
        if let Some(child) = self.children.get(*first) {
            child.visit(rest, false, f);
        }
    }
}

#[derive(Debug, Default)]
pub struct Router {
    subs: Node,
    /// (group, filter) → members, served round robin.
    shared: HashMap<(String, String), SharedGroup>,
    retained: HashMap<String, Arc<Message>>,
    count: usize,
}

impl Router {
    /// Add or replace a subscription; true if it is new.
    pub fn subscribe(&mut self, client: &str, filter: &str, sub: Sub) -> bool {
        let new = match topic::parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let g = self
                    .shared
                    .entry((group.to_string(), inner.to_string()))
                    .or_default();
                match g.members.iter_mut().find(|(c, _)| &**c == client) {
                    Some(m) => {
                        m.1 = sub;
                        false
                    }
                    None => {
                        g.members.push((Arc::from(client), sub));
                        true
                    }
                }
            }
            _ => self.subs.insert(filter, client, sub),
        };
        self.count += usize::from(new);
        new
    }

    /// Remove a subscription; true if it existed.
    pub fn unsubscribe(&mut self, client: &str, filter: &str) -> bool {
        let removed = match topic::parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let key = (group.to_string(), inner.to_string());
                let Some(g) = self.shared.get_mut(&key) else {
                    return false;
                };
                let before = g.members.len();
                g.members.retain(|(c, _)| &**c != client);
                let removed = g.members.len() < before;
                if g.members.is_empty() {
                    self.shared.remove(&key);
                }
                removed
            }
            _ => {
                let levels: Vec<&str> = filter.split('/').collect();
                self.subs.remove(&levels, client)
            }
        };
        self.count -= usize::from(removed);
        removed
    }

    pub fn subscription_count(&self) -> usize {
        self.count
    }

    /// Store, replace or (empty payload) clear a retained message.
    pub fn retain(&mut self, msg: &Arc<Message>) {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
        } else {
            self.retained.insert(msg.topic.clone(), msg.clone());
        }
    }

    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Retained messages matching `filter` (expired ones are skipped).
    pub fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
        self.retained
            .values()
            .filter(|m| matches(filter, &m.topic) && !m.expired())
            .cloned()
            .collect()
    }

    /// Every client that receives `msg`, once each.
    pub fn route(&mut self, msg: &Message) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        // Position in `out` per client: fan-out to N clients stays O(N).
        let mut index: HashMap<Arc<str>, usize> = HashMap::new();
        let mut add = |client: &Arc<str>, sub: &Sub| {
            if sub.opts.no_local && msg.origin.as_deref() == Some(&**client) {
                return;
            }
            let qos = msg.qos.min(sub.opts.qos);
            let retain = msg.retain && sub.opts.retain_as_published;
            match index.get(client).and_then(|&i| out.get_mut(i)) {
                Some(t) => {
                    t.qos = t.qos.max(qos);
                    t.retain |= retain;
                    t.sub_ids.extend(sub.id);
                }
                None => {
                    index.insert(client.clone(), out.len());
                    out.push(Target {
                        client_id: client.clone(),
                        qos,
                        retain,
                        sub_ids: sub.id.into_iter().collect(),
                    });
                }
            }
        };
        let levels: Vec<&str> = msg.topic.split('/').collect();
        self.subs.visit(&levels, true, &mut add);
        for ((_, filter), group) in &mut self.shared {
            if group.members.is_empty() || !matches(filter, &msg.topic) {
                continue;
            }
            let i = group.next % group.members.len();
            group.next = group.next.wrapping_add(1);
            if let Some((client, sub)) = group.members.get(i) {
                add(client, sub);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn sub(qos: u8) -> Sub {
        Sub {
            opts: SubOptions {
                qos,
                ..SubOptions::default()
            },
            id: None,
        }
    }

    fn msg(topic: &str, qos: u8) -> Message {
        Message::new(topic.into(), Bytes::from_static(b"x"), qos, true)
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
        let mut r = Router::default();
        r.subscribe("a", "x/#", sub(0));
        r.subscribe("a", "x/+", sub(2));
        r.subscribe("b", "x/y", sub(1));
        let mut t = r.route(&msg("x/y", 2));
        t.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        assert_eq!(t.len(), 2);
        assert_eq!((&*t[0].client_id, t[0].qos), ("a", 2));
        assert_eq!((&*t[1].client_id, t[1].qos), ("b", 1));
        assert!(
            !t[0].retain,
            "retain flag cleared unless retain-as-published"
        );
        assert_eq!(r.subscription_count(), 3);
        assert!(r.unsubscribe("a", "x/#"));
        assert!(!r.unsubscribe("a", "x/#"));
        assert_eq!(r.subscription_count(), 2);
    }

    #[test]
    fn no_local_and_subscription_ids() {
        let mut r = Router::default();
        let mut s = sub(1);
        s.opts.no_local = true;
        s.opts.retain_as_published = true;
        s.id = Some(7);
        r.subscribe("me", "t", s);
        let mut m = msg("t", 1);
        m.origin = Some("me".into());
        assert!(r.route(&m).is_empty());
        m.origin = Some("other".into());
        let t = r.route(&m);
        assert_eq!(t[0].sub_ids, vec![7]);
        assert!(t[0].retain);
    }

    #[test]
    fn shared_subscriptions_take_turns() {
        let mut r = Router::default();
        r.subscribe("a", "$share/g/t/#", sub(1));
        r.subscribe("b", "$share/g/t/#", sub(1));
        let got: Vec<String> = (0..4)
            .map(|_| r.route(&msg("t/1", 1))[0].client_id.to_string())
            .collect();
        assert_eq!(got, ["a", "b", "a", "b"]);
        assert!(r.unsubscribe("a", "$share/g/t/#"));
        assert_eq!(&*r.route(&msg("t/1", 1))[0].client_id, "b");
    }

    #[test]
    fn retained_set_replace_clear() {
        let mut r = Router::default();
        r.retain(&Arc::new(msg("a/b", 0)));
        r.retain(&Arc::new(Message::new(
            "a/b".into(),
            Bytes::from_static(b"2"),
            0,
            true,
        )));
        assert_eq!(r.retained_for("a/#").len(), 1);
        assert_eq!(&r.retained_for("a/+")[0].payload[..], b"2");
        r.retain(&Arc::new(Message::new("a/b".into(), Bytes::new(), 0, true)));
        assert_eq!(r.retained_count(), 0);
    }

    /// The trie routes exactly like the reference `matches` over every
    /// filter, on a grid of filters and topics (including `$` topics,
    /// empty levels and parent matches of `#`).
    #[test]
    fn trie_agrees_with_linear_matching() {
        let levels = ["a", "b", "+", "#", "", "$s"];
        let mut filters = Vec::new();
        for x in levels {
            filters.push(x.to_string());
            for y in levels {
                filters.push(format!("{x}/{y}"));
                for z in ["c", "+", "#"] {
                    filters.push(format!("{x}/{y}/{z}"));
                }
            }
        }
        filters
            .retain(|f| crate::mqtt::topic::validate_filter(f).is_ok() && !f.starts_with("$share"));
        let mut r = Router::default();
        for (i, f) in filters.iter().enumerate() {
            r.subscribe(&format!("c{i}"), f, sub(1));
        }
        let names = ["a", "b", "c", "", "$s"];
        let mut checked = 0;
        for x in names {
            for y in names {
                for topic in [x.to_string(), format!("{x}/{y}"), format!("{x}/{y}/c")] {
                    if topic.is_empty() {
                        continue;
                    }
                    let mut got: Vec<String> = r
                        .route(&msg(&topic, 1))
                        .into_iter()
                        .map(|t| t.client_id.to_string())
                        .collect();
                    got.sort();
                    let mut want: Vec<String> = filters
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| matches(f, &topic))
                        .map(|(i, _)| format!("c{i}"))
                        .collect();
                    want.sort();
                    assert_eq!(got, want, "topic {topic:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 70);
        // Unsubscribing everything prunes the trie back to empty.
        for (i, f) in filters.iter().enumerate() {
            assert!(r.unsubscribe(&format!("c{i}"), f), "{f}");
        }
        assert!(r.subs.is_empty());
        assert_eq!(r.subscription_count(), 0);
    }
}
