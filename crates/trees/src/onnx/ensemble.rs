//! `TreeEnsembleClassifier` / `TreeEnsembleRegressor` attributes to trees, with the same
//! reading rules as ONNX Runtime's `TreeEnsembleCommon::Init` (a tree is a run of nodes with
//! the same tree id and its first node is the root; weights on non-leaves are ignored).

use std::collections::{HashMap, HashSet};

use super::proto::{AttributeProto, NodeProto, TensorProto, attribute_type, data_type};
use super::tensor;
use crate::error::LoadError;
use crate::finish::{Finish, OrtClassifier, OrtRegressor, Transform};
use crate::forest::{Aggregate, Forest};
use crate::model::Compiled;
use crate::real::Real;
use crate::tree::{self, Branch, Node, Op, Tree};

/// The op, read: ready to compile in either precision.
pub struct Ensemble {
    pub trees: Vec<Tree>,
    pub outputs: usize,
    pub kind: Kind,
    pub base: Vec<f64>,
    pub transform: Transform,
}

pub enum Kind {
    Classifier {
        labels: Labels,
        binary_case: bool,
        all_positive: bool,
    },
    Regressor {
        aggregate: Aggregate,
    },
}

pub enum Labels {
    Int(Vec<i64>),
    String(Vec<String>),
}

impl Ensemble {
    pub fn compile<T: Real>(&self) -> Compiled<T> {
        let base: Vec<T> = self.base.iter().map(|&b| T::from_f64(b)).collect();
        match &self.kind {
            Kind::Classifier {
                labels,
                binary_case,
                all_positive,
            } => Compiled {
                forest: Forest::compile(&self.trees, self.outputs, Aggregate::Sum, false),
                finish: Finish::OrtClassifier(OrtClassifier {
                    base,
                    labels: match labels {
                        Labels::Int(v) => v.clone(),
                        Labels::String(v) => (0..v.len() as i64).collect(),
                    },
                    binary_case: *binary_case,
                    all_positive: *all_positive,
                    transform: self.transform,
                }),
            },
            Kind::Regressor { aggregate } => {
                let forest = Forest::compile(&self.trees, self.outputs, *aggregate, true);
                let n_trees = forest.n_trees();
                Compiled {
                    forest,
                    finish: Finish::OrtRegressor(OrtRegressor {
                        base,
                        aggregate: *aggregate,
                        n_trees,
                        transform: self.transform,
                    }),
                }
            }
        }
    }
}

const COMMON: &[&str] = &[
    "nodes_treeids",
    "nodes_nodeids",
    "nodes_featureids",
    "nodes_values",
    "nodes_values_as_tensor",
    "nodes_modes",
    "nodes_truenodeids",
    "nodes_falsenodeids",
    "nodes_missing_value_tracks_true",
    "nodes_hitrates",
    "nodes_hitrates_as_tensor",
    "base_values",
    "base_values_as_tensor",
    "post_transform",
];
const CLASSIFIER: &[&str] = &[
    "class_treeids",
    "class_nodeids",
    "class_ids",
    "class_weights",
    "class_weights_as_tensor",
    "classlabels_int64s",
    "classlabels_strings",
];
const REGRESSOR: &[&str] = &[
    "target_treeids",
    "target_nodeids",
    "target_ids",
    "target_weights",
    "target_weights_as_tensor",
    "n_targets",
    "aggregate_function",
];

/// Reads the op. `double` is whether the ensemble runs in double (its input is FP64), which
/// decides whether `*_as_tensor` doubles are acceptable.
pub fn read(node: &NodeProto, double: bool) -> Result<Ensemble, LoadError> {
    let classifier = node.op_type == "TreeEnsembleClassifier";
    let attrs = Attrs::new(node, if classifier { CLASSIFIER } else { REGRESSOR })?;
    let (prefix, n) = if classifier {
        let ints = attrs.ints("classlabels_int64s")?;
        let strings = attrs.strings("classlabels_strings")?;
        let n = match (&ints, &strings) {
            (Some(_), Some(_)) => {
                return Err(LoadError::invalid(
                    "both classlabels_int64s and classlabels_strings are set",
                ));
            }
            (Some(v), None) => v.len(),
            (None, Some(v)) => v.len(),
            (None, None) => 0,
        };
        if n < 2 {
            return Err(LoadError::unsupported(format!(
                "a classifier with {n} class labels (at least 2 are needed)"
            )));
        }
        ("class", n)
    } else {
        let n = attrs.int("n_targets")?.unwrap_or(0);
        if n <= 0 || n > 1 << 20 {
            return Err(LoadError::invalid(format!("n_targets is {n}")));
        }
        ("target", n as usize)
    };

    let treeids = attrs.ints_or_empty("nodes_treeids")?;
    let nodeids = attrs.ints_or_empty("nodes_nodeids")?;
    let featureids = attrs.ints_or_empty("nodes_featureids")?;
    let modes = attrs.strings("nodes_modes")?.unwrap_or_default();
    let truenodes = attrs.ints_or_empty("nodes_truenodeids")?;
    let falsenodes = attrs.ints_or_empty("nodes_falsenodeids")?;
    let missing = attrs.ints_or_empty("nodes_missing_value_tracks_true")?;
    let values = attrs.reals("nodes_values", double)?;
    let count = treeids.len();
    for (name, len) in [
        ("nodes_nodeids", nodeids.len()),
        ("nodes_featureids", featureids.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", truenodes.len()),
        ("nodes_falsenodeids", falsenodes.len()),
        ("nodes_values", values.len()),
    ] {
        if len != count {
            return Err(LoadError::invalid(format!(
                "{name} has {len} entries but nodes_treeids has {count}"
            )));
        }
    }
    if !missing.is_empty() && missing.len() != count {
        return Err(LoadError::invalid(format!(
            "nodes_missing_value_tracks_true has {} entries but nodes_treeids has {count}",
            missing.len()
        )));
    }

    let w_trees = attrs.ints_or_empty(&format!("{prefix}_treeids"))?;
    let w_nodes = attrs.ints_or_empty(&format!("{prefix}_nodeids"))?;
    let w_ids = attrs.ints_or_empty(&format!("{prefix}_ids"))?;
    let w_values = attrs.reals(&format!("{prefix}_weights"), double)?;
    for (name, len) in [
        (format!("{prefix}_nodeids"), w_nodes.len()),
        (format!("{prefix}_ids"), w_ids.len()),
        (format!("{prefix}_weights"), w_values.len()),
    ] {
        if len != w_trees.len() {
            return Err(LoadError::invalid(format!(
                "{name} has {len} entries but {prefix}_treeids has {}",
                w_trees.len()
            )));
        }
    }

    // Trees: runs of equal tree ids, in order; (tree id, node id) -> (tree, local index).
    let mut trees: Vec<Tree> = Vec::new();
    let mut index: HashMap<(i64, i64), (usize, usize)> = HashMap::with_capacity(count);
    let mut finished: HashSet<i64> = HashSet::new();
    let mut tree_ids: Vec<i64> = Vec::new();
    for i in 0..count {
        let tree_id = treeids[i];
        if tree_ids.last() != Some(&tree_id) {
            if !finished.insert(tree_id) {
                return Err(LoadError::unsupported(format!(
                    "the nodes of tree {tree_id} are not contiguous"
                )));
            }
            tree_ids.push(tree_id);
            trees.push(Tree::default());
        }
        let t = trees.len() - 1;
        let local = trees[t].nodes.len();
        if index.insert((tree_id, nodeids[i]), (t, local)).is_some() {
            return Err(LoadError::invalid(format!(
                "node {} of tree {tree_id} is defined twice",
                nodeids[i]
            )));
        }
        trees[t].nodes.push(Node::Leaf(Vec::new()));
    }
    let local_of = |tree_id: i64, node_id: i64, what: &str| {
        index
            .get(&(tree_id, node_id))
            .map(|&(_, l)| l)
            .ok_or_else(|| {
                LoadError::invalid(format!("tree {tree_id} has no node {node_id} ({what})"))
            })
    };
    for i in 0..count {
        let (t, local) = index[&(treeids[i], nodeids[i])];
        let op = match modes[i].as_str() {
            "LEAF" => continue,
            "BRANCH_LEQ" => Op::Leq,
            "BRANCH_LT" => Op::Lt,
            "BRANCH_GTE" => Op::Gte,
            "BRANCH_GT" => Op::Gt,
            "BRANCH_EQ" => Op::Eq,
            "BRANCH_NEQ" => Op::Neq,
            other => {
                return Err(LoadError::invalid(format!(
                    "tree {} node {} has unknown mode '{other}'",
                    treeids[i], nodeids[i]
                )));
            }
        };
        let feature = featureids[i];
        if !(0..tree::MAX_FEATURES as i64).contains(&feature) {
            return Err(LoadError::invalid(format!(
                "tree {} node {} reads feature {feature}",
                treeids[i], nodeids[i]
            )));
        }
        let tracks_true = missing.get(i) == Some(&1);
        trees[t].nodes[local] = Node::Branch(Branch {
            feature: feature as u32,
            threshold: values[i],
            op,
            nan_true: if tracks_true { true } else { op.nan_result() },
            zero_is_missing: false,
            true_child: local_of(treeids[i], truenodes[i], "true child")?,
            false_child: local_of(treeids[i], falsenodes[i], "false child")?,
        });
    }

    // Weights, in ONNX Runtime's order: sorted by (tree id, node id), then as listed.
    let mut order: Vec<usize> = (0..w_trees.len()).collect();
    order.sort_by_key(|&i| (w_trees[i], w_nodes[i], i));
    for i in order {
        let &(t, local) = index.get(&(w_trees[i], w_nodes[i])).ok_or_else(|| {
            LoadError::invalid(format!(
                "a weight refers to node {} of tree {}, which does not exist",
                w_nodes[i], w_trees[i]
            ))
        })?;
        if !(0..n as i64).contains(&w_ids[i]) {
            return Err(LoadError::invalid(format!(
                "{prefix}_ids has {} but there are {n} {}s",
                w_ids[i],
                if classifier { "classe" } else { "target" }
            )));
        }
        if let Node::Leaf(weights) = &mut trees[t].nodes[local] {
            weights.push((w_ids[i] as u32, w_values[i]));
        }
    }

    let base = attrs.reals("base_values", double)?;
    // onnxruntime 1.32 enforces 0 or n, except one for two classes (XGBoost's binary
    // conversion), which the two-class rules give a meaning of their own.
    let allowed = base.is_empty() || base.len() == n || (classifier && n == 2 && base.len() == 1);
    if !allowed {
        return Err(LoadError::invalid(format!(
            "{} base values for {n} outputs (0 or {n} expected)",
            base.len()
        )));
    }
    let transform = match attrs.string("post_transform")?.as_deref().unwrap_or("NONE") {
        "NONE" => Transform::None,
        "LOGISTIC" => Transform::Logistic,
        "SOFTMAX" => Transform::Softmax,
        "SOFTMAX_ZERO" => Transform::SoftmaxZero,
        "PROBIT" => Transform::Probit,
        other => {
            return Err(LoadError::invalid(format!(
                "unknown post_transform '{other}'"
            )));
        }
    };
    let kind = if classifier {
        let labels = match attrs.strings("classlabels_strings")? {
            Some(v) => Labels::String(v),
            None => Labels::Int(attrs.ints_or_empty("classlabels_int64s")?.to_vec()),
        };
        let classes: HashSet<i64> = w_ids.iter().copied().collect();
        let binary_case = n == 2 && classes.len() == 1;
        // `!(w < 0)` as onnxruntime tests it: NaN counts as positive.
        let all_positive = !w_values.iter().any(|&w| w < 0.0);
        check_two_class_outputs(&trees, n, base.len(), binary_case, transform)?;
        Kind::Classifier {
            labels,
            binary_case,
            all_positive,
        }
    } else {
        let aggregate = match attrs
            .string("aggregate_function")?
            .as_deref()
            .unwrap_or("SUM")
        {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => {
                return Err(LoadError::invalid(format!(
                    "unknown aggregate_function '{other}'"
                )));
            }
        };
        Kind::Regressor { aggregate }
    };
    Ok(Ensemble {
        trees,
        outputs: n,
        kind,
        base,
        transform,
    })
}

/// With two classes and fewer than two base values, a row whose leaves give class 1 no
/// weight leaves onnxruntime with one score; for PROBIT, or outside the binary case with one
/// base value, it then writes only the first of the two probability columns. Refused rather
/// than guessed.
fn check_two_class_outputs(
    trees: &[Tree],
    n: usize,
    bases: usize,
    binary_case: bool,
    transform: Transform,
) -> Result<(), LoadError> {
    if n != 2 || bases >= 2 {
        return Ok(());
    }
    let class1_can_be_missing = trees.iter().all(|t| {
        t.nodes.iter().any(|node| match node {
            Node::Leaf(w) => !w.iter().any(|&(c, _)| c == 1),
            Node::Branch(_) => false,
        })
    });
    if !class1_can_be_missing {
        return Ok(());
    }
    if transform == Transform::Probit {
        return Err(LoadError::unsupported(
            "two classes with PROBIT and fewer than two base values: onnxruntime leaves the second probability unwritten",
        ));
    }
    if bases == 1 && !binary_case {
        return Err(LoadError::unsupported(
            "two classes, weights for both and one base value: onnxruntime leaves the second probability unwritten",
        ));
    }
    Ok(())
}

/// The op's attributes by name; refuses attributes it does not know (their meaning would be
/// ignored) and attributes of the wrong type.
struct Attrs<'a> {
    by_name: HashMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attrs<'a> {
    fn new(node: &'a NodeProto, specific: &[&str]) -> Result<Attrs<'a>, LoadError> {
        let mut by_name = HashMap::new();
        for a in &node.attribute {
            if !COMMON.contains(&a.name.as_str()) && !specific.contains(&a.name.as_str()) {
                return Err(LoadError::unsupported(format!(
                    "{} attribute '{}'",
                    node.op_type, a.name
                )));
            }
            if by_name.insert(a.name.as_str(), a).is_some() {
                return Err(LoadError::invalid(format!(
                    "attribute '{}' appears twice",
                    a.name
                )));
            }
        }
        Ok(Attrs { by_name })
    }

    fn typed(&self, name: &str, ty: i32) -> Result<Option<&'a AttributeProto>, LoadError> {
        match self.by_name.get(name) {
            None => Ok(None),
            Some(a) if a.r#type == ty || a.r#type == 0 => Ok(Some(a)),
            Some(a) => Err(LoadError::invalid(format!(
                "attribute '{name}' has type {}, expected {ty}",
                a.r#type
            ))),
        }
    }

    fn ints(&self, name: &str) -> Result<Option<&'a [i64]>, LoadError> {
        Ok(self
            .typed(name, attribute_type::INTS)?
            .map(|a| a.ints.as_slice()))
    }

    fn ints_or_empty(&self, name: &str) -> Result<&'a [i64], LoadError> {
        Ok(self.ints(name)?.unwrap_or(&[]))
    }

    fn int(&self, name: &str) -> Result<Option<i64>, LoadError> {
        Ok(self.typed(name, attribute_type::INT)?.map(|a| a.i))
    }

    fn string(&self, name: &str) -> Result<Option<String>, LoadError> {
        self.typed(name, attribute_type::STRING)?
            .map(|a| utf8(&a.s, name))
            .transpose()
    }

    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, LoadError> {
        self.typed(name, attribute_type::STRINGS)?
            .map(|a| a.strings.iter().map(|s| utf8(s, name)).collect())
            .transpose()
    }

    /// `name` (FLOATS) or `name_as_tensor` (a float or, when `double`, a double tensor), as
    /// exact f64 values; empty when neither is set.
    fn reals(&self, name: &str, double: bool) -> Result<Vec<f64>, LoadError> {
        let floats = self.typed(name, attribute_type::FLOATS)?;
        let tensor_name = format!("{name}_as_tensor");
        let tensor = self.typed(&tensor_name, attribute_type::TENSOR)?;
        match (floats, tensor) {
            (Some(_), Some(_)) => Err(LoadError::invalid(format!(
                "both {name} and {tensor_name} are set"
            ))),
            (Some(a), None) => Ok(a.floats.iter().map(|&f| f as f64).collect()),
            (None, Some(a)) => {
                let t: &TensorProto = a
                    .t
                    .as_ref()
                    .ok_or_else(|| LoadError::invalid(format!("{tensor_name} has no tensor")))?;
                if t.data_type == data_type::DOUBLE && !double {
                    return Err(LoadError::unsupported(format!(
                        "{tensor_name} holds doubles but the ensemble's input is float (onnxruntime compares in float)"
                    )));
                }
                tensor::reals(t, &tensor_name)
            }
            (None, None) => Ok(Vec::new()),
        }
    }
}

fn utf8(bytes: &[u8], name: &str) -> Result<String, LoadError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| LoadError::invalid(format!("attribute '{name}' is not UTF-8")))
}
