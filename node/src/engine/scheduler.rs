//! Scheduling decisions that need no model, kept apart so they can be unit-tested: which
//! free slot a new prompt goes to (the one whose cached tokens share the longest prefix
//! with it), how much of that cache can be kept, and how one step's batch is shared out
//! between generating slots and pending prompt tokens.

/// Length of the common prefix of two token (or any) sequences.
pub fn common_prefix_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A free slot as the scheduler sees it: what its KV cache holds and when it was last used.
#[derive(Debug, Clone, Copy)]
pub struct FreeSlot<'a, T> {
    pub index: usize,
    pub cached: &'a [T],
    /// Larger is more recent.
    pub last_used: u64,
}

/// Where a new prompt goes and how many of its tokens are already in that slot's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub slot: usize,
    /// Prompt tokens reused from the cache; at most `prompt.len() - 1`, because the last
    /// prompt token must be decoded again to get the logits of the first new token.
    pub reused: usize,
}

/// Picks the free slot with the longest cached prefix of `prompt`; among equals (no shared
/// prefix at all, typically) the least recently used one, so that recent conversations
/// keep their caches for their follow-up requests. `None` when no slot is free.
pub fn place<T: PartialEq>(free: &[FreeSlot<'_, T>], prompt: &[T]) -> Option<Placement> {
    let best = free.iter().max_by(|a, b| {
        let (pa, pb) = (
            common_prefix_len(a.cached, prompt),
            common_prefix_len(b.cached, prompt),
        );
        // Longer prefix first; on a tie the *older* slot wins, hence the reversed order.
        pa.cmp(&pb).then(b.last_used.cmp(&a.last_used))
    })?;
    let shared = common_prefix_len(best.cached, prompt);
    Some(Placement {
        slot: best.index,
        reused: shared.min(prompt.len().saturating_sub(1)),
    })
}

/// Splits `budget` batch positions between prompts still being evaluated, in admission
/// order: each takes what it needs until the budget runs out. Generating slots have
/// already taken one position each; this is what is left. Prompts that get nothing wait
/// for the next step, so a long prompt delays the others by at most one chunk.
pub fn share_prompt_budget(budget: usize, pending: &[usize]) -> Vec<usize> {
    let mut left = budget;
    pending
        .iter()
        .map(|&wants| {
            let take = wants.min(left);
            left -= take;
            take
        })
        .collect()
}

/// Tokens that a request may generate: what was asked for, capped by what is left of the
/// slot's context after the prompt. `Err` carries the number that did not fit.
pub fn generation_room(
    prompt_tokens: usize,
    max_tokens: Option<usize>,
    slot_context: usize,
) -> Result<usize, Option<usize>> {
    let room = slot_context.saturating_sub(prompt_tokens);
    match max_tokens {
        _ if room == 0 => Err(None),
        Some(asked) if asked > room => Err(Some(asked)),
        Some(asked) => Ok(asked),
        None => Ok(room),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix() {
        assert_eq!(common_prefix_len(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix_len::<i32>(&[], &[1]), 0);
        assert_eq!(common_prefix_len(&[1, 2], &[1, 2, 3]), 2);
    }

    #[test]
    fn longest_prefix_wins() {
        let a = [1, 2, 3, 4];
        let b = [1, 2, 9];
        let free = [
            FreeSlot {
                index: 0,
                cached: &b[..],
                last_used: 5,
            },
            FreeSlot {
                index: 1,
                cached: &a[..],
                last_used: 1,
            },
        ];
        let placed = place(&free, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(placed, Placement { slot: 1, reused: 4 });
    }

    #[test]
    fn without_shared_prefix_the_least_recently_used_slot_is_taken() {
        let a = [7, 8];
        let b = [9];
        let free = [
            FreeSlot {
                index: 0,
                cached: &a[..],
                last_used: 10,
            },
            FreeSlot {
                index: 3,
                cached: &b[..],
                last_used: 2,
            },
        ];
        assert_eq!(
            place(&free, &[1, 2]).unwrap(),
            Placement { slot: 3, reused: 0 }
        );
    }

    #[test]
    fn identical_prompt_still_decodes_its_last_token() {
        let a = [1, 2, 3];
        let free = [FreeSlot {
            index: 0,
            cached: &a[..],
            last_used: 0,
        }];
        assert_eq!(place(&free, &[1, 2, 3]).unwrap().reused, 2);
        // A cache longer than the prompt (an earlier answer) is cut back the same way.
        assert_eq!(place(&free, &[1, 2]).unwrap().reused, 1);
    }

    #[test]
    fn no_free_slot_no_placement() {
        assert_eq!(place::<i32>(&[], &[1]), None);
    }

    #[test]
    fn prompt_budget_goes_in_admission_order() {
        assert_eq!(share_prompt_budget(10, &[4, 8, 3]), vec![4, 6, 0]);
        assert_eq!(share_prompt_budget(0, &[4]), vec![0]);
        assert_eq!(share_prompt_budget(100, &[4, 8]), vec![4, 8]);
    }

    #[test]
    fn generation_room_respects_the_slot_context() {
        assert_eq!(generation_room(10, Some(5), 100), Ok(5));
        assert_eq!(generation_room(10, None, 100), Ok(90));
        assert_eq!(generation_room(10, Some(91), 100), Err(Some(91)));
        assert_eq!(generation_room(100, None, 100), Err(None));
        assert_eq!(generation_room(100, Some(1), 100), Err(None));
    }
}
