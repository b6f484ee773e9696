//! A slot on a parsed instruction where the composer keeps what it works out once for it (an
//! include's URL, joined and checked), for every request that runs the same parsed template
//! again (a cached layout). The engine neither reads the slot nor compares it: a template's
//! meaning is its nodes, and a copy of a node starts with an empty slot.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, RwLock};

/// One value of any type, replaced as a whole; shared by every request holding the template.
#[derive(Default)]
pub struct Memo(RwLock<Option<Arc<dyn Any + Send + Sync>>>);

impl Memo {
    /// The value kept, when there is one and it is a `T`.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        // A poisoned lock only means a writer panicked between two whole values.
        let kept = self.0.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        kept.downcast().ok()
    }

    /// Keeps `value` in place of what was kept.
    pub fn set<T: Any + Send + Sync>(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }
}

impl Clone for Memo {
    /// A copy of a node is a node of its own: it starts with nothing kept.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Memo {
    /// What is kept is derived from the node, never part of its meaning.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Memo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Memo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_one_value_of_its_type_and_copies_start_empty() {
        let memo = Memo::default();
        assert!(memo.get::<String>().is_none());
        memo.set(Arc::new("a".to_owned()));
        assert_eq!(
            memo.get::<String>().as_deref().map(String::as_str),
            Some("a")
        );
        assert!(
            memo.get::<u32>().is_none(),
            "another type is not read as this one"
        );
        memo.set(Arc::new(7_u32));
        assert_eq!(memo.get::<u32>().as_deref(), Some(&7));
        assert!(
            memo.get::<String>().is_none(),
            "a new value replaces the old"
        );
        assert!(memo.clone().get::<u32>().is_none());
        assert_eq!(memo, Memo::default());
    }
}
