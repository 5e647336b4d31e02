//! "Did you mean": what a name nobody declared was probably meant to be, and how the names that
//! could have been written are listed.
//!
//! Every resolver that meets an unknown name (a compose key, a service in `dependsOn` or in a
//! playbook, the environment of `-e`, the playbook of `-p`) words its message with these, so
//! that suggestions read alike everywhere.

/// How many single-character edits a typo may be from the name meant: `imgae` is 2 from `image`.
pub const MAX_DISTANCE: usize = 2;

/// The candidate `word` most likely misspells: the nearest within [`MAX_DISTANCE`] edits, the
/// first given on a tie; `None` when none is that near.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= MAX_DISTANCE)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The names a message offers instead: `a, b, c`, or `none`.
pub fn listing<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// The words a value must be one of, quoted: `` `a` ``, `` `a` or `b` ``, `` `a`, `b` or `c` ``.
pub fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Levenshtein distance, in characters: the fewest insertions, deletions and substitutions that
/// turn `a` into `b`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("image", "image"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("imgae", "image"), 2);
        assert_eq!(edit_distance("port", "ports"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            edit_distance("ünï", "uni"),
            2,
            "counts characters, not bytes"
        );
    }

    #[test]
    fn closest_is_the_nearest_within_two_edits_first_on_a_tie() {
        let keys = ["services", "volumes", "name", "version"];
        assert_eq!(closest("servics", keys), Some("services"));
        assert_eq!(closest("volume", keys), Some("volumes"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("anything", []), None);
        // `volums` is 2 from `columns` and 1 from `volumes`: the nearer wins wherever it is listed.
        assert_eq!(closest("volums", ["columns", "volumes"]), Some("volumes"));
        assert_eq!(closest("ab", ["ax", "ay"]), Some("ax"));
    }

    #[test]
    fn listing_names_each_or_none() {
        assert_eq!(listing(["web", "api"]), "web, api");
        assert_eq!(listing(["web"]), "web");
        assert_eq!(listing([]), "none");
    }

    #[test]
    fn one_of_quotes_each_word() {
        assert_eq!(one_of(&["rollback"]), "`rollback`");
        assert_eq!(one_of(&["http", "tcp"]), "`http` or `tcp`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(one_of(&[]), "");
    }
}
