//! LightGBM's text model format (`Booster.save_model`), evaluated as LightGBM does: double
//! thresholds and sums, `fval <= threshold` to the left, missing values per the node's
//! `decision_type` (bit 1: default left; bits 2-3: missing type None/Zero/NaN).

use std::collections::HashMap;

use crate::error::LoadError;
use crate::finish::{Finish, LightGbmObjective};
use crate::forest::{Aggregate, Forest};
use crate::model::{
    Compiled, DType, Engine, InputSpec, NativeInput, OutputKind, OutputSpec, Signature, TreeModel,
    check_native_input, features_needed,
};
use crate::tree::{self, Branch, Node, Op, Tree};

impl TreeModel {
    /// Loads a LightGBM text model (`model.txt`, `save_model`).
    pub fn from_lightgbm_text(text: &str, input: NativeInput) -> Result<TreeModel, LoadError> {
        load(text, input)
    }
}

pub fn load(text: &str, input: NativeInput) -> Result<TreeModel, LoadError> {
    let mut blocks = text.split("\nTree=");
    let header = fields(blocks.next().unwrap_or_default());
    if !text.starts_with("tree") {
        return Err(LoadError::Decode(
            "not a LightGBM text model (no 'tree' header)".into(),
        ));
    }
    if text.contains("\naverage_output") {
        return Err(LoadError::unsupported(
            "LightGBM average_output (random forest mode)",
        ));
    }
    let num_class: usize = number(&header, "num_class")?;
    let per_iteration: usize = number(&header, "num_tree_per_iteration")?;
    if num_class == 0 || per_iteration != num_class {
        return Err(LoadError::unsupported(format!(
            "num_class {num_class} with {per_iteration} trees per iteration"
        )));
    }
    let objective = header
        .get("objective")
        .ok_or_else(|| LoadError::invalid("no objective"))?;
    let mut words = objective.split_whitespace();
    let name = words.next().unwrap_or_default();
    let options: HashMap<&str, &str> = words.filter_map(|w| w.split_once(':')).collect();
    if options.contains_key("sqrt") || objective.split_whitespace().any(|w| w == "sqrt") {
        return Err(LoadError::unsupported("LightGBM regression with sqrt"));
    }
    let finish = match name {
        "binary" if num_class == 1 => {
            let sigmoid = options
                .get("sigmoid")
                .map(|s| s.parse::<f64>())
                .transpose()
                .map_err(|_| LoadError::invalid(format!("objective '{objective}'")))?
                .unwrap_or(1.0);
            LightGbmObjective::Binary { sigmoid }
        }
        "multiclass" if num_class > 1 => LightGbmObjective::Multiclass,
        "regression" | "regression_l2" | "regression_l1" | "l1" | "l2" | "huber" | "fair"
        | "quantile" | "mape"
            if num_class == 1 =>
        {
            LightGbmObjective::Identity
        }
        other => {
            return Err(LoadError::unsupported(format!(
                "LightGBM objective '{other}' with {num_class} classes"
            )));
        }
    };

    let mut trees = Vec::new();
    for block in blocks {
        let body = block.split("\nend of trees").next().unwrap_or_default();
        let t = trees.len();
        let tree = read_tree(&fields(body), t, t % num_class)?;
        trees.push(tree);
    }
    if trees.is_empty() || trees.len() % num_class != 0 {
        return Err(LoadError::invalid(format!(
            "{} trees for {num_class} classes",
            trees.len()
        )));
    }
    let needed = features_needed(&trees).max(number::<usize>(&header, "max_feature_idx")? + 1);
    check_native_input(&input, needed)?;
    tree::validate(&trees, input.features, num_class)?;

    let (columns, outputs) = match finish {
        LightGbmObjective::Identity => (1, vec![scores("variable", 1)]),
        _ => {
            let columns = num_class.max(2);
            (columns, vec![label(), scores("probabilities", columns)])
        }
    };
    let forest = Forest::<f64>::compile(&trees, num_class, Aggregate::Sum, num_class == 1);
    Ok(TreeModel {
        signature: Signature {
            input: InputSpec {
                name: input.name,
                dtype: DType::F32,
                features: input.features,
            },
            outputs,
        },
        engine: Engine::F64(Compiled {
            forest,
            finish: Finish::LightGbm(finish),
        }),
        columns,
        string_labels: None,
        scales: Vec::new(),
        any_float_input: true,
    })
}

pub(crate) fn label() -> OutputSpec {
    OutputSpec {
        name: "label".into(),
        dtype: DType::I64,
        kind: OutputKind::Label,
        columns: 1,
    }
}

pub(crate) fn scores(name: &str, columns: usize) -> OutputSpec {
    OutputSpec {
        name: name.into(),
        dtype: DType::F32,
        kind: OutputKind::Scores,
        columns,
    }
}

fn read_tree(f: &HashMap<&str, &str>, t: usize, class: usize) -> Result<Tree, LoadError> {
    let leaves: usize = number(f, "num_leaves")?;
    if number::<usize>(f, "num_cat").unwrap_or(0) > 0 {
        return Err(LoadError::unsupported(format!(
            "tree {t} has categorical splits"
        )));
    }
    if f.get("is_linear").is_some_and(|v| *v != "0") {
        return Err(LoadError::unsupported(format!("tree {t} is a linear tree")));
    }
    let leaf_value: Vec<f64> = list(f, "leaf_value", t)?;
    if leaves == 0 || leaf_value.len() != leaves {
        return Err(LoadError::invalid(format!(
            "tree {t} has {leaves} leaves and {} leaf values",
            leaf_value.len()
        )));
    }
    let internal = leaves - 1;
    let mut nodes: Vec<Node> = Vec::with_capacity(2 * leaves - 1);
    if internal > 0 {
        let feature: Vec<u32> = list(f, "split_feature", t)?;
        let threshold: Vec<f64> = list(f, "threshold", t)?;
        let decision: Vec<u8> = list(f, "decision_type", t)?;
        let left: Vec<i64> = list(f, "left_child", t)?;
        let right: Vec<i64> = list(f, "right_child", t)?;
        for (name, len) in [
            ("split_feature", feature.len()),
            ("threshold", threshold.len()),
            ("decision_type", decision.len()),
            ("left_child", left.len()),
            ("right_child", right.len()),
        ] {
            if len != internal {
                return Err(LoadError::invalid(format!(
                    "tree {t}: {name} has {len} entries for {internal} splits"
                )));
            }
        }
        // Internal node i is node i; leaf j is node `internal + j`.
        let child = |c: i64| -> Result<usize, LoadError> {
            let index = if c >= 0 {
                c as usize
            } else {
                internal + (!c) as usize
            };
            if index >= internal + leaves {
                return Err(LoadError::invalid(format!(
                    "tree {t} has a child {c} out of range"
                )));
            }
            Ok(index)
        };
        for i in 0..internal {
            let d = decision[i];
            if d & 1 != 0 {
                return Err(LoadError::unsupported(format!(
                    "tree {t} node {i} is a categorical split"
                )));
            }
            let default_left = d & 2 != 0;
            let (nan_true, zero_is_missing) = match (d >> 2) & 3 {
                // None: NaN is read as 0.0, which then compares as usual.
                0 => (0.0 <= threshold[i], false),
                1 => (default_left, true),
                2 => (default_left, false),
                other => {
                    return Err(LoadError::invalid(format!(
                        "tree {t} node {i} has missing type {other}"
                    )));
                }
            };
            nodes.push(Node::Branch(Branch {
                feature: feature[i],
                threshold: threshold[i],
                op: Op::Leq,
                nan_true,
                zero_is_missing,
                true_child: child(left[i])?,
                false_child: child(right[i])?,
            }));
        }
    }
    nodes.extend(
        leaf_value
            .into_iter()
            .map(|v| Node::Leaf(vec![(class as u32, v)])),
    );
    Ok(Tree { nodes })
}

/// `key=value` lines.
fn fields(block: &str) -> HashMap<&str, &str> {
    block
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

fn number<N: std::str::FromStr>(f: &HashMap<&str, &str>, key: &str) -> Result<N, LoadError> {
    f.get(key)
        .ok_or_else(|| LoadError::invalid(format!("missing '{key}'")))?
        .parse()
        .map_err(|_| LoadError::invalid(format!("'{key}' is not a number")))
}

fn list<N: std::str::FromStr>(
    f: &HashMap<&str, &str>,
    key: &str,
    t: usize,
) -> Result<Vec<N>, LoadError> {
    f.get(key)
        .ok_or_else(|| LoadError::invalid(format!("tree {t} has no '{key}'")))?
        .split_whitespace()
        .map(|v| {
            v.parse()
                .map_err(|_| LoadError::invalid(format!("tree {t}: '{key}' has '{v}'")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> NativeInput {
        NativeInput {
            name: "input".into(),
            features: 2,
        }
    }

    const MODEL: &str = "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\nobjective=binary sigmoid:1\n\nTree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=1\nthreshold=0.5\ndecision_type=2\nleft_child=-1\nright_child=-2\nleaf_value=-1 1\nis_linear=0\nshrinkage=1\n\n\nend of trees\n";

    #[test]
    fn a_small_model_loads() {
        let model = TreeModel::from_lightgbm_text(MODEL, input()).unwrap();
        let mut out = crate::Outputs::new();
        // NaN with missing type None reads as 0.0 <= 0.5: left.
        model
            .predict(&[0.0, f32::NAN, 0.0, 0.7], 2, &mut out)
            .unwrap();
        assert_eq!(out.labels, vec![0, 1]);
    }

    #[test]
    fn bad_files_are_refused() {
        let cases = [
            (
                MODEL.replace("left_child=-1", "left_child=-5"),
                "out of range",
            ),
            (
                MODEL.replace("threshold=0.5", "threshold=nan"),
                "NaN threshold",
            ),
            (
                MODEL.replace("leaf_value=-1 1", "leaf_value=-1"),
                "2 leaves and 1 leaf values",
            ),
            (MODEL.replace("num_cat=0", "num_cat=1"), "categorical"),
            (
                MODEL.replace("decision_type=2", "decision_type=1"),
                "categorical",
            ),
            (
                MODEL.replace("binary sigmoid:1", "lambdarank"),
                "objective 'lambdarank'",
            ),
            (
                MODEL.replace("left_child=-1", "left_child=0"),
                "points to itself",
            ),
            (MODEL[..MODEL.len() / 2].to_string(), ""),
            ("not a model".to_string(), "not a LightGBM"),
        ];
        for (text, reason) in cases {
            let Err(e) = TreeModel::from_lightgbm_text(&text, input()) else {
                panic!("loaded a model that should be refused ({reason})");
            };
            assert!(
                e.to_string().contains(reason),
                "expected '{reason}', got: {e}"
            );
        }
    }
}
