//! Scheduling decisions that need no model, kept apart so they can be unit-tested: which
//! free slot a new prompt goes to (the one whose cached tokens share the longest prefix
//! with it), how much of that cache can be kept, and how one step's batch is shared out
//! between generating slots and pending prompt tokens.
//!
//! With flash attention off, both keep a prompt's rows in batches of one shape class, so
//! that its logits are the same bits whether it was evaluated alone, beside other requests,
//! or partly from a cache. llama.cpp's CPU matrix products pick their algorithm by the
//! number of rows in a step (one row: plain dot products; two or more: llamafile's tiled
//! GEMM; 8 or more: the tiled K-quant product), each summing in its own order. A prompt's
//! rows then go in chunks of at least [`INVARIANT_PROMPT_ROWS`] (a shorter prompt in one
//! chunk), and a cached prefix is cut back so that at least that many tokens are evaluated
//! again. Otherwise a greedy answer whose two best tokens are close changes with the load,
//! with the cache, and when a stream is continued on another node. Flash attention has
//! thresholds of its own that no prompt chunking avoids (one sequence's decode step takes
//! its split-KV kernel over 512 cached cells, several sequences' steps the plain one), so
//! with it on the minimum is one row, as in llama-server, and a cache hit costs one token.

/// The fewest rows of a prompt chunk, unless the prompt (or what is left of it) is
/// shorter, when decoding is meant to be batch-invariant: the largest row-count threshold
/// among llama.cpp's CPU matrix products.
pub const INVARIANT_PROMPT_ROWS: usize = 8;

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
    /// Prompt tokens reused from the cache. The last `min_rows` are evaluated again (all of
    /// a shorter prompt), in one batch shape with a fresh evaluation of the prompt; the last
    /// one would have to be anyway, for the logits of the first new token.
    pub reused: usize,
}

/// Picks the free slot with the longest cached prefix of `prompt`; among equals (no shared
/// prefix at all, typically) the least recently used one, so that recent conversations
/// keep their caches for their follow-up requests. `None` when no slot is free.
pub fn place<T: PartialEq>(
    free: &[FreeSlot<'_, T>],
    prompt: &[T],
    min_rows: usize,
) -> Option<Placement> {
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
        reused: shared.min(prompt.len().saturating_sub(min_rows.max(1))),
    })
}

/// Splits `budget` batch positions between prompts still being evaluated, in admission
/// order: each takes what it needs until the budget runs out. Generating slots have
/// already taken one position each; this is what is left. Prompts that get nothing wait
/// for the next step, so a long prompt delays the others by at most one chunk.
///
/// No chunk has fewer than `min_rows` rows and none leaves fewer behind: a prompt that
/// cannot take that much waits, and one with less than that left takes it all at once. The
/// oldest prompt always moves when `budget` is at least `2 * min_rows - 1`.
pub fn share_prompt_budget(budget: usize, pending: &[usize], min_rows: usize) -> Vec<usize> {
    let mut left = budget;
    pending
        .iter()
        .map(|&wants| {
            let mut take = wants.min(left);
            if take < wants {
                take = take.min(wants.saturating_sub(min_rows));
                if take < min_rows {
                    take = 0;
                }
            }
            left -= take;
            take
        })
        .collect()
}

/// The `min_rows` of [`place`] and [`share_prompt_budget`] for a batch of `batch_size`
/// positions of which up to `slots` go to generating slots: `wanted`, or less where the
/// batch is too small for the oldest prompt to always move.
pub fn min_prompt_rows(batch_size: usize, slots: usize, wanted: usize) -> usize {
    let budget = batch_size.saturating_sub(slots);
    (budget.div_ceil(2)).clamp(1, wanted.max(1))
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
        let placed = place(&free, &[1, 2, 3, 4, 5, 6], 1).unwrap();
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
            place(&free, &[1, 2], 1).unwrap(),
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
        assert_eq!(place(&free, &[1, 2, 3], 1).unwrap().reused, 2);
        // A cache longer than the prompt (an earlier answer) is cut back the same way.
        assert_eq!(place(&free, &[1, 2], 1).unwrap().reused, 1);
    }

    #[test]
    fn a_cached_prompt_evaluates_its_last_min_rows_again() {
        let cached: Vec<u32> = (0..100).collect();
        let free = [FreeSlot {
            index: 0,
            cached: &cached[..],
            last_used: 0,
        }];
        // The same 100 tokens: the last 64 again, as the last chunk of a fresh evaluation.
        assert_eq!(place(&free, &cached, 64).unwrap().reused, 36);
        // A follow-up longer than the cache keeps all of it.
        let longer: Vec<u32> = (0..200).collect();
        assert_eq!(place(&free, &longer, 64).unwrap().reused, 100);
        // A prompt shorter than that is evaluated whole.
        assert_eq!(place(&free, &cached[..40], 64).unwrap().reused, 0);
    }

    #[test]
    fn no_free_slot_no_placement() {
        assert_eq!(place::<i32>(&[], &[1], 1), None);
    }

    #[test]
    fn prompt_budget_goes_in_admission_order() {
        assert_eq!(share_prompt_budget(10, &[4, 8, 3], 1), vec![4, 6, 0]);
        assert_eq!(share_prompt_budget(0, &[4], 1), vec![0]);
        assert_eq!(share_prompt_budget(100, &[4, 8], 1), vec![4, 8]);
    }

    #[test]
    fn prompt_chunks_keep_their_minimum_rows() {
        // Whole prompts fit; a short one waits for room for all of it.
        assert_eq!(share_prompt_budget(512, &[300, 40], 64), vec![300, 40]);
        assert_eq!(share_prompt_budget(320, &[300, 40], 64), vec![300, 0]);
        // A long one is cut so that at least 64 rows are left for its last chunk...
        assert_eq!(share_prompt_budget(512, &[540], 64), vec![476]);
        assert_eq!(share_prompt_budget(512, &[1000, 300], 64), vec![512, 0]);
        // ...and takes no chunk smaller than 64.
        assert_eq!(share_prompt_budget(560, &[500, 300], 64), vec![500, 0]);
        assert_eq!(share_prompt_budget(600, &[500, 300], 64), vec![500, 100]);
        assert_eq!(share_prompt_budget(630, &[500, 300], 64), vec![500, 130]);
        // A remainder of fewer than 128 goes in one chunk or waits.
        assert_eq!(share_prompt_budget(100, &[120], 64), vec![0]);
        assert_eq!(share_prompt_budget(120, &[120], 64), vec![120]);
    }

    #[test]
    fn small_batches_lower_the_minimum_so_prompts_still_move() {
        assert_eq!(min_prompt_rows(512, 8, 64), 64);
        assert_eq!(min_prompt_rows(512, 8, 1), 1);
        assert_eq!(min_prompt_rows(64, 4, 64), 30);
        assert_eq!(min_prompt_rows(8, 8, 8), 1);
        // The oldest prompt always moves with what generating slots leave.
        for (batch, slots) in [(512, 8), (64, 4), (40, 39), (9, 8), (12, 4)] {
            let rows = min_prompt_rows(batch, slots, 64);
            for wants in 1..400 {
                let take = share_prompt_budget(batch - slots, &[wants], rows)[0];
                assert!(
                    take > 0,
                    "batch {batch}, {slots} slots, {wants} tokens: stuck"
                );
            }
        }
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
