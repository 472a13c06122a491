//! The compiled ensemble: every tree's nodes in one flat array, and walks from the roots to
//! the leaves for a block of rows.
//!
//! Layout: a node is one 16-byte record (threshold, feature+flags, both children) rather than
//! parallel arrays, because a step reads every field of a node at once: one cache line serves
//! four nodes, where parallel arrays would touch four lines per step. Children are indices
//! into the same array. A leaf is a node whose children are itself, so a walk can take a
//! tree's depth in steps without testing for leaves; that lets eight walks (eight rows
//! through one tree, or one row through eight trees) advance in lockstep, whose independent
//! loads and compares overlap instead of waiting on each other. Leaf payloads are indexed
//! by node number. Sums run tree by tree in order, as the reference runtimes add them.

use crate::real::{Feature, Real};
use crate::tree::{Node, Op, Tree};

const FEATURE_MASK: u32 = (1 << 24) - 1;
/// NaN goes the other way than the comparison sends it.
const NAN_FLIP: u32 = 1 << 24;
/// |x| <= 1e-35 is treated as missing (LightGBM `missing_type=Zero`).
const ZERO_MISSING: u32 = 1 << 25;
const OP_SHIFT: u32 = 26;

/// LightGBM's `kZeroThreshold` (a float constant compared in double).
const ZERO_THRESHOLD: f64 = 1e-35_f32 as f64;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Branch<T> {
    threshold: T,
    meta: u32,
    /// `[false child, true child]`, so that the comparison's result indexes it.
    children: [u32; 2],
}

/// How the trees' leaves are combined for one output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    /// Summed here, divided by the tree count when the scores are finished.
    Average,
    Min,
    Max,
}

/// Which walk the nodes allow: one comparison for all (the fast, common case), or any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Leq,
    Lt,
    General,
}

/// How leaves are read, all indexed by node number (branches hold unused entries).
#[derive(Clone, Debug)]
enum Leaves<T> {
    /// One output, one value per leaf (ONNX Runtime reads only a leaf's first weight then).
    Single(Vec<T>),
    /// Exactly one weight per leaf, for any output (binary classifiers, multiclass boosting).
    One { output: Vec<u32>, value: Vec<T> },
    /// `start[node]..start[node + 1]` index `output`/`value`.
    Multi {
        start: Vec<u32>,
        output: Vec<u32>,
        value: Vec<T>,
    },
}

/// Walks advanced together.
const LANES: usize = 8;

#[derive(Clone, Debug)]
pub struct Forest<T> {
    nodes: Vec<Branch<T>>,
    roots: Vec<u32>,
    /// Steps from each root to its deepest leaf.
    depths: Vec<u32>,
    leaves: Leaves<T>,
    rule: Rule,
    aggregate: Aggregate,
    outputs: usize,
    /// Where each output's sum starts (XGBoost starts from the base margin).
    init: Vec<T>,
}

impl<T: Real> Forest<T> {
    /// Compiles validated trees (see `tree::validate`). `single` asks for one value per leaf
    /// (its first weight), valid only with one output.
    pub fn compile(trees: &[Tree], outputs: usize, aggregate: Aggregate, single: bool) -> Self {
        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(trees.len());
        let mut depths = Vec::with_capacity(trees.len());
        // Per node: its weights (empty for branches).
        let mut weights: Vec<&[(u32, f64)]> = Vec::new();
        let mut ops = Vec::new();
        for tree in trees {
            let (root, depth) = lay_out(tree, &mut nodes, &mut weights, &mut ops);
            roots.push(root);
            depths.push(depth);
        }
        let uniform = |op: Op| ops.iter().all(|&(o, zero): &(Op, bool)| o == op && !zero);
        let rule = if uniform(Op::Leq) {
            Rule::Leq
        } else if uniform(Op::Lt) {
            Rule::Lt
        } else {
            Rule::General
        };
        let first = |w: &[(u32, f64)]| w.first().map_or(T::ZERO, |&(_, v)| T::from_f64(v));
        let leaves = if single && outputs == 1 {
            Leaves::Single(weights.iter().map(|w| first(w)).collect())
        } else if weights.iter().all(|w| w.len() <= 1) {
            Leaves::One {
                output: weights
                    .iter()
                    .map(|w| w.first().map_or(0, |&(o, _)| o))
                    .collect(),
                value: weights.iter().map(|w| first(w)).collect(),
            }
        } else {
            let mut start = Vec::with_capacity(weights.len() + 1);
            let mut output = Vec::new();
            let mut value = Vec::new();
            for w in &weights {
                start.push(output.len() as u32);
                for &(o, v) in *w {
                    output.push(o);
                    value.push(T::from_f64(v));
                }
            }
            start.push(output.len() as u32);
            Leaves::Multi {
                start,
                output,
                value,
            }
        };
        Forest {
            nodes,
            roots,
            depths,
            leaves,
            rule,
            aggregate,
            outputs,
            init: vec![T::ZERO; outputs],
        }
    }

    /// Starts each output's sum at `init` instead of 0 (for `Aggregate::Sum`).
    pub fn starting_at(mut self, init: Vec<T>) -> Self {
        debug_assert_eq!(init.len(), self.outputs);
        self.init = init;
        self
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// Aggregates every tree for `n` rows of `stride` features into `scores` (`n * outputs`)
    /// and `has` (whether any leaf reached gave that output a weight). Both are overwritten.
    pub fn accumulate<X: Feature>(
        &self,
        rows: &[X],
        stride: usize,
        scores: &mut [T],
        has: &mut [bool],
    ) {
        match self.rule {
            Rule::Leq => self.accumulate_with::<X, LeqRule>(rows, stride, scores, has),
            Rule::Lt => self.accumulate_with::<X, LtRule>(rows, stride, scores, has),
            Rule::General => self.accumulate_with::<X, GeneralRule>(rows, stride, scores, has),
        }
    }

    fn accumulate_with<X: Feature, R: Decide>(
        &self,
        rows: &[X],
        stride: usize,
        scores: &mut [T],
        has: &mut [bool],
    ) {
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => {
                for row in scores.chunks_exact_mut(self.outputs) {
                    row.copy_from_slice(&self.init);
                }
            }
            Aggregate::Min => scores.fill(T::INFINITY),
            Aggregate::Max => scores.fill(-T::INFINITY),
        }
        has.fill(false);
        let n_rows = rows.len() / stride;
        if n_rows < LANES {
            // Few rows: each row walks eight trees at a time.
            for (r, row) in rows.chunks_exact(stride).enumerate() {
                let lanes = [row; LANES];
                let mut t = 0;
                while t + LANES <= self.roots.len() {
                    let mut at: [u32; LANES] =
                        self.roots[t..t + LANES].try_into().unwrap_or([0; LANES]);
                    let depth = self.depths[t..t + LANES].iter().copied().max().unwrap_or(0);
                    self.walk::<X, R, LANES>(&mut at, &lanes, depth);
                    for leaf in at {
                        self.add(r, leaf, scores, has);
                    }
                    t += LANES;
                }
                for t in t..self.roots.len() {
                    let mut at = [self.roots[t]];
                    self.walk::<X, R, 1>(&mut at, &[row], self.depths[t]);
                    self.add(r, at[0], scores, has);
                }
            }
            return;
        }
        // Many rows: eight rows at a time walk each tree.
        for (t, &root) in self.roots.iter().enumerate() {
            let depth = self.depths[t];
            let mut chunks = rows.chunks_exact(stride * LANES);
            let mut r = 0;
            for chunk in chunks.by_ref() {
                let lanes: [&[X]; LANES] = std::array::from_fn(|k| &chunk[k * stride..][..stride]);
                let mut at = [root; LANES];
                self.walk::<X, R, LANES>(&mut at, &lanes, depth);
                for (k, leaf) in at.into_iter().enumerate() {
                    self.add(r + k, leaf, scores, has);
                }
                r += LANES;
            }
            for row in chunks.remainder().chunks_exact(stride) {
                let mut at = [root];
                self.walk::<X, R, 1>(&mut at, &[row], depth);
                self.add(r, at[0], scores, has);
                r += 1;
            }
        }
    }

    /// Up to `depth` steps of `L` walks; a walk that reached its leaf stays there, and the
    /// walks stop early once none moves (every branch moves to another node).
    #[inline(always)]
    fn walk<X: Feature, R: Decide, const L: usize>(
        &self,
        at: &mut [u32; L],
        rows: &[&[X]; L],
        depth: u32,
    ) {
        for _ in 0..depth {
            let mut moved = false;
            for k in 0..L {
                let node = &self.nodes[at[k] as usize];
                let x: T = rows[k][(node.meta & FEATURE_MASK) as usize].to();
                let next = node.children[R::go_true(x, node.threshold, node.meta) as usize];
                moved |= next != at[k];
                at[k] = next;
            }
            if !moved {
                break;
            }
        }
    }

    /// Adds leaf node `leaf`'s weights to row `r`.
    #[inline(always)]
    fn add(&self, r: usize, leaf: u32, scores: &mut [T], has: &mut [bool]) {
        let leaf = leaf as usize;
        let n = self.outputs;
        match &self.leaves {
            Leaves::Single(values) => {
                scores[r] = combine(self.aggregate, scores[r], values[leaf], has[r]);
                has[r] = true;
            }
            Leaves::One { output, value } => {
                let o = r * n + output[leaf] as usize;
                scores[o] = combine(self.aggregate, scores[o], value[leaf], has[o]);
                has[o] = true;
            }
            Leaves::Multi {
                start,
                output,
                value,
            } => {
                for w in start[leaf] as usize..start[leaf + 1] as usize {
                    let o = r * n + output[w] as usize;
                    scores[o] = combine(self.aggregate, scores[o], value[w], has[o]);
                    has[o] = true;
                }
            }
        }
    }
}

#[inline(always)]
fn combine<T: Real>(aggregate: Aggregate, acc: T, v: T, has: bool) -> T {
    match aggregate {
        Aggregate::Sum | Aggregate::Average => acc + v,
        // ONNX Runtime: `(!has || v < acc) ? v : acc`.
        Aggregate::Min => {
            if !has || v < acc {
                v
            } else {
                acc
            }
        }
        Aggregate::Max => {
            if !has || v > acc {
                v
            } else {
                acc
            }
        }
    }
}

/// Appends `tree` depth-first (true child first, so that the false side is laid out after the
/// whole true subtree); returns the root's index and the tree's depth.
fn lay_out<'a, T: Real>(
    tree: &'a Tree,
    nodes: &mut Vec<Branch<T>>,
    weights: &mut Vec<&'a [(u32, f64)]>,
    ops: &mut Vec<(Op, bool)>,
) -> (u32, u32) {
    /// (node in `tree`, parent and side to point at it, depth).
    type Pending = (usize, Option<(usize, usize)>, u32);
    let mut stack: Vec<Pending> = vec![(0, None, 0)];
    let root = nodes.len() as u32;
    let mut deepest = 0;
    while let Some((i, parent, depth)) = stack.pop() {
        let at = nodes.len();
        match &tree.nodes[i] {
            Node::Leaf(w) => {
                deepest = deepest.max(depth);
                weights.push(w);
                nodes.push(Branch {
                    threshold: T::ZERO,
                    meta: 0,
                    children: [at as u32; 2],
                });
            }
            Node::Branch(b) => {
                let flip = b.nan_true != b.op.nan_result();
                let meta = b.feature
                    | if flip { NAN_FLIP } else { 0 }
                    | if b.zero_is_missing { ZERO_MISSING } else { 0 }
                    | (op_code(b.op) << OP_SHIFT);
                weights.push(&[]);
                nodes.push(Branch {
                    threshold: T::from_f64(b.threshold),
                    meta,
                    children: [0, 0],
                });
                ops.push((b.op, b.zero_is_missing));
                // Popped in reverse: the true child is laid out first.
                stack.push((b.false_child, Some((at, 0)), depth + 1));
                stack.push((b.true_child, Some((at, 1)), depth + 1));
            }
        }
        if let Some((p, side)) = parent {
            nodes[p].children[side] = at as u32;
        }
    }
    (root, deepest)
}

fn op_code(op: Op) -> u32 {
    match op {
        Op::Leq => 0,
        Op::Lt => 1,
        Op::Gte => 2,
        Op::Gt => 3,
        Op::Eq => 4,
        Op::Neq => 5,
    }
}

/// One node's decision.
trait Decide {
    fn go_true<T: Real>(x: T, threshold: T, meta: u32) -> bool;
}

struct LeqRule;
struct LtRule;
struct GeneralRule;

impl Decide for LeqRule {
    #[inline(always)]
    fn go_true<T: Real>(x: T, threshold: T, meta: u32) -> bool {
        (x <= threshold) | ((meta & NAN_FLIP != 0) & x.is_nan())
    }
}

impl Decide for LtRule {
    #[inline(always)]
    fn go_true<T: Real>(x: T, threshold: T, meta: u32) -> bool {
        (x < threshold) | ((meta & NAN_FLIP != 0) & x.is_nan())
    }
}

impl Decide for GeneralRule {
    #[inline(always)]
    fn go_true<T: Real>(x: T, threshold: T, meta: u32) -> bool {
        let op = meta >> OP_SHIFT;
        let nan_goes = (op == 5) != (meta & NAN_FLIP != 0);
        if x.is_nan() {
            return nan_goes;
        }
        if meta & ZERO_MISSING != 0 && x.to_f64().abs() <= ZERO_THRESHOLD {
            return nan_goes;
        }
        match op {
            0 => x <= threshold,
            1 => x < threshold,
            2 => x >= threshold,
            3 => x > threshold,
            4 => x == threshold,
            _ => x != threshold,
        }
    }
}
