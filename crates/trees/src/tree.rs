//! The loaders' common description of an ensemble: trees as node lists, before compilation.
//! Every loader (ONNX, LightGBM, XGBoost) produces these, and `validate` is the one place that
//! checks the structure (children in range, a tree and not a graph, weights in range).

use crate::error::LoadError;

/// A branch's comparison: the true branch is taken when `x OP threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Op {
    /// Where IEEE comparison sends NaN when nothing overrides it (every comparison with NaN is
    /// false except `!=`).
    pub fn nan_result(self) -> bool {
        self == Op::Neq
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    pub feature: u32,
    /// Exact value in the forest's precision (an f32 threshold is stored widened).
    pub threshold: f64,
    pub op: Op,
    /// Where NaN goes: true branch or false branch.
    pub nan_true: bool,
    /// LightGBM `missing_type=Zero`: values with |x| <= 1e-35 (and NaN) take the NaN branch.
    pub zero_is_missing: bool,
    pub true_child: usize,
    pub false_child: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Branch(Branch),
    /// (output index, weight) pairs, in the order they are added.
    Leaf(Vec<(u32, f64)>),
}

/// One tree; node 0 is the root.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Deepest tree accepted: a guard against degenerate chains, far beyond trained models.
pub const MAX_DEPTH: usize = 4096;

/// Features are stored in 24 bits next to the node's flags.
pub const MAX_FEATURES: usize = 1 << 24;

/// Checks that `trees` are trees (each node reached exactly once from the root, no cycles, no
/// self-loops), that features are below `features`, thresholds are numbers, every leaf has a
/// weight and every weight's output index is below `outputs`.
pub fn validate(trees: &[Tree], features: usize, outputs: usize) -> Result<(), LoadError> {
    if trees.is_empty() {
        return Err(LoadError::invalid("the ensemble has no trees"));
    }
    if features == 0 {
        return Err(LoadError::invalid("the input has no features"));
    }
    if features > MAX_FEATURES {
        return Err(LoadError::unsupported(format!(
            "{features} features; at most {MAX_FEATURES} are supported"
        )));
    }
    for (t, tree) in trees.iter().enumerate() {
        validate_tree(t, tree, features, outputs)?;
    }
    Ok(())
}

fn validate_tree(t: usize, tree: &Tree, features: usize, outputs: usize) -> Result<(), LoadError> {
    let n = tree.nodes.len();
    if n == 0 {
        return Err(LoadError::invalid(format!("tree {t} has no nodes")));
    }
    let mut seen = vec![false; n];
    // (node, depth); iterative so that a hostile depth cannot overflow the stack.
    let mut stack = vec![(0usize, 0usize)];
    seen[0] = true;
    while let Some((i, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(LoadError::unsupported(format!(
                "tree {t} is deeper than {MAX_DEPTH}"
            )));
        }
        match &tree.nodes[i] {
            Node::Branch(b) => {
                if b.feature as usize >= features {
                    return Err(LoadError::invalid(format!(
                        "tree {t} node {i} reads feature {} but the input has {features}",
                        b.feature
                    )));
                }
                if b.threshold.is_nan() {
                    return Err(LoadError::invalid(format!(
                        "tree {t} node {i} has a NaN threshold"
                    )));
                }
                for child in [b.true_child, b.false_child] {
                    if child >= n {
                        return Err(LoadError::invalid(format!(
                            "tree {t} node {i} points to node {child}, out of range (tree has {n} nodes)"
                        )));
                    }
                    if child == i {
                        return Err(LoadError::invalid(format!(
                            "tree {t} node {i} points to itself"
                        )));
                    }
                    if seen[child] {
                        return Err(LoadError::invalid(format!(
                            "tree {t} node {child} is reached twice (a cycle or a shared node)"
                        )));
                    }
                    seen[child] = true;
                    stack.push((child, depth + 1));
                }
            }
            Node::Leaf(weights) => {
                if weights.is_empty() {
                    return Err(LoadError::invalid(format!(
                        "tree {t} leaf {i} has no weight"
                    )));
                }
                for &(output, weight) in weights {
                    if output as usize >= outputs {
                        return Err(LoadError::invalid(format!(
                            "tree {t} leaf {i} has a weight for output {output}, but there are {outputs}"
                        )));
                    }
                    if weight.is_nan() {
                        return Err(LoadError::invalid(format!(
                            "tree {t} leaf {i} has a NaN weight"
                        )));
                    }
                }
            }
        }
    }
    if let Some(orphan) = seen.iter().position(|s| !s) {
        return Err(LoadError::invalid(format!(
            "tree {t} node {orphan} is unreachable from the root"
        )));
    }
    Ok(())
}
