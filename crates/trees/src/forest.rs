//! The compiled ensemble: all trees' branch nodes in one flat array, leaves in another, and the
//! walk from a root to a leaf for a block of rows, tree by tree.
//!
//! Layout choice: a branch is one 16-byte record (threshold, feature+flags, both children)
//! rather than four parallel arrays, because a walk reads every field of a node at once: one
//! cache line then serves four nodes, where parallel arrays would touch four lines per step.
//! Children are indices into the same array; a child with the top bit set is a leaf index.
//! Trees are laid out depth-first, so a node's false child often sits in the next line.

use crate::real::{Feature, Real};
use crate::tree::{Node, Op, Tree};

/// A child reference with this bit set is a leaf number.
pub const LEAF: u32 = 1 << 31;
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

/// How leaves are read.
#[derive(Clone, Debug)]
enum Leaves<T> {
    /// One output, one value per leaf (ONNX Runtime reads only a leaf's first weight then).
    Single(Vec<T>),
    /// `start[l]..start[l + 1]` index `output`/`value`.
    Multi {
        start: Vec<u32>,
        output: Vec<u32>,
        value: Vec<T>,
    },
}

#[derive(Clone, Debug)]
pub struct Forest<T> {
    branches: Vec<Branch<T>>,
    roots: Vec<u32>,
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
        let mut branches = Vec::new();
        let mut roots = Vec::with_capacity(trees.len());
        let mut leaf_weights: Vec<&[(u32, f64)]> = Vec::new();
        let mut ops = Vec::new();
        for tree in trees {
            roots.push(lay_out(tree, &mut branches, &mut leaf_weights, &mut ops));
        }
        let uniform = |op: Op| ops.iter().all(|&(o, zero): &(Op, bool)| o == op && !zero);
        let rule = if uniform(Op::Leq) {
            Rule::Leq
        } else if uniform(Op::Lt) {
            Rule::Lt
        } else {
            Rule::General
        };
        let leaves = if single && outputs == 1 {
            Leaves::Single(leaf_weights.iter().map(|w| T::from_f64(w[0].1)).collect())
        } else {
            let mut start = Vec::with_capacity(leaf_weights.len() + 1);
            let mut output = Vec::new();
            let mut value = Vec::new();
            for weights in &leaf_weights {
                start.push(output.len() as u32);
                for &(o, v) in *weights {
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
            branches,
            roots,
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
        let n = self.outputs;
        match &self.leaves {
            Leaves::Single(values) => {
                for &root in &self.roots {
                    for (row, score) in rows.chunks_exact(stride).zip(scores.iter_mut()) {
                        let v = values[self.leaf::<X, R>(root, row) as usize];
                        *score = combine(self.aggregate, *score, v, true);
                    }
                }
                has.fill(true);
            }
            Leaves::Multi {
                start,
                output,
                value,
            } => {
                for &root in &self.roots {
                    for (r, row) in rows.chunks_exact(stride).enumerate() {
                        let leaf = self.leaf::<X, R>(root, row) as usize;
                        let (s, h) = (&mut scores[r * n..][..n], &mut has[r * n..][..n]);
                        for w in start[leaf] as usize..start[leaf + 1] as usize {
                            let o = output[w] as usize;
                            s[o] = combine(self.aggregate, s[o], value[w], h[o]);
                            h[o] = true;
                        }
                    }
                }
            }
        }
    }

    /// Walks one tree for one row; returns the leaf number.
    #[inline(always)]
    fn leaf<X: Feature, R: Decide>(&self, mut at: u32, row: &[X]) -> u32 {
        while at & LEAF == 0 {
            let node = &self.branches[at as usize];
            let x: T = row[(node.meta & FEATURE_MASK) as usize].to();
            at = node.children[R::go_true(x, node.threshold, node.meta) as usize];
        }
        at & !LEAF
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
/// whole true subtree); returns the root's reference.
fn lay_out<'a, T: Real>(
    tree: &'a Tree,
    branches: &mut Vec<Branch<T>>,
    leaf_weights: &mut Vec<&'a [(u32, f64)]>,
    ops: &mut Vec<(Op, bool)>,
) -> u32 {
    // Each slot is filled once its child's reference is known: (node, parent slot, side).
    let mut stack: Vec<(usize, Option<(usize, usize)>)> = vec![(0, None)];
    let mut root = 0;
    while let Some((i, parent)) = stack.pop() {
        let reference = match &tree.nodes[i] {
            Node::Leaf(weights) => {
                leaf_weights.push(weights);
                (leaf_weights.len() as u32 - 1) | LEAF
            }
            Node::Branch(b) => {
                let at = branches.len();
                let flip = b.nan_true != b.op.nan_result();
                let meta = b.feature
                    | if flip { NAN_FLIP } else { 0 }
                    | if b.zero_is_missing { ZERO_MISSING } else { 0 }
                    | (op_code(b.op) << OP_SHIFT);
                branches.push(Branch {
                    threshold: T::from_f64(b.threshold),
                    meta,
                    children: [0, 0],
                });
                ops.push((b.op, b.zero_is_missing));
                // Popped in reverse: the true child is laid out first.
                stack.push((b.false_child, Some((at, 0))));
                stack.push((b.true_child, Some((at, 1))));
                at as u32
            }
        };
        match parent {
            Some((p, side)) => branches[p].children[side] = reference,
            None => root = reference,
        }
    }
    root
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
