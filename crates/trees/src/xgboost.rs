//! XGBoost's JSON model format (`Booster.save_model("model.json")`, schema of XGBoost 1.x-3.x
//! `gbtree`), evaluated as XGBoost's CPU predictor does: float thresholds, `x < split` to the
//! left, NaN to the `default_left` side, float margins starting from the base margin.

use serde_json::Value;

use crate::error::LoadError;
use crate::finish::{Finish, XgboostObjective};
use crate::forest::{Aggregate, Forest};
use crate::lightgbm::{label, scores};
use crate::model::{
    Compiled, DType, Engine, InputSpec, NativeInput, Signature, TreeModel, check_native_input,
    features_needed,
};
use crate::tree::{self, Branch, Node, Op, Tree};

fn bad(why: impl Into<String>) -> LoadError {
    LoadError::invalid(why)
}

impl TreeModel {
    /// Loads an XGBoost JSON model (`model.json`, `save_model`).
    pub fn from_xgboost_json(text: &str, input: NativeInput) -> Result<TreeModel, LoadError> {
        load(text, input)
    }
}

pub fn load(text: &str, input: NativeInput) -> Result<TreeModel, LoadError> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| LoadError::Decode(format!("XGBoost JSON: {e}")))?;
    let learner = root
        .get("learner")
        .ok_or_else(|| LoadError::Decode("not an XGBoost model (no 'learner')".into()))?;
    let booster = &learner["gradient_booster"];
    match booster["name"].as_str() {
        Some("gbtree") => {}
        other => {
            return Err(LoadError::unsupported(format!(
                "XGBoost booster {other:?} (gbtree is supported)"
            )));
        }
    }
    let params = &learner["learner_model_param"];
    let num_class: usize = param(params, "num_class")?;
    let num_target: usize = param(params, "num_target").unwrap_or(1);
    if num_target > 1 {
        return Err(LoadError::unsupported("XGBoost multi-target models"));
    }
    let objective_name = learner["objective"]["name"]
        .as_str()
        .ok_or_else(|| bad("no objective name"))?;
    let objective = match objective_name {
        "binary:logistic" => XgboostObjective::BinaryLogistic,
        "multi:softprob" | "multi:softmax" => XgboostObjective::Softmax,
        "reg:logistic" => XgboostObjective::RegLogistic,
        "reg:squarederror"
        | "reg:linear"
        | "reg:absoluteerror"
        | "reg:pseudohubererror"
        | "reg:quantileerror"
        | "binary:logitraw" => XgboostObjective::Identity,
        other => {
            return Err(LoadError::unsupported(format!(
                "XGBoost objective '{other}'"
            )));
        }
    };
    let groups = if objective == XgboostObjective::Softmax {
        if num_class < 2 {
            return Err(bad(format!("{objective_name} with num_class {num_class}")));
        }
        num_class
    } else {
        1
    };

    let model = &booster["model"];
    let json_trees = model["trees"].as_array().ok_or_else(|| bad("no trees"))?;
    let tree_info = model["tree_info"]
        .as_array()
        .ok_or_else(|| bad("no tree_info"))?;
    if tree_info.len() != json_trees.len() {
        return Err(bad(format!(
            "{} trees but {} tree_info entries",
            json_trees.len(),
            tree_info.len()
        )));
    }
    let mut trees = Vec::with_capacity(json_trees.len());
    for (t, (tree, group)) in json_trees.iter().zip(tree_info).enumerate() {
        let group = group
            .as_u64()
            .filter(|&g| (g as usize) < groups)
            .ok_or_else(|| bad(format!("tree {t} has group {group}, outside 0..{groups}")))?;
        trees.push(read_tree(tree, t, group as u32)?);
    }
    let needed = features_needed(&trees);
    check_native_input(&input, needed)?;
    tree::validate(&trees, input.features, groups)?;

    let base = base_margins(params, objective, groups)?;
    let forest =
        Forest::<f32>::compile(&trees, groups, Aggregate::Sum, groups == 1).starting_at(base);
    let (columns, outputs) = match objective {
        XgboostObjective::BinaryLogistic => (2, vec![label(), scores("probabilities", 2)]),
        XgboostObjective::Softmax => (groups, vec![label(), scores("probabilities", groups)]),
        _ => (1, vec![scores("variable", 1)]),
    };
    Ok(TreeModel {
        signature: Signature {
            input: InputSpec {
                name: input.name,
                dtype: DType::F32,
                features: input.features,
            },
            outputs,
        },
        engine: Engine::F32(Compiled {
            forest,
            finish: Finish::Xgboost(objective),
        }),
        columns,
        string_labels: None,
        scales: Vec::new(),
        any_float_input: true,
    })
}

/// `base_score` ("5E-1", or "[5E-1]" / one per class since XGBoost 3.1), as margins.
fn base_margins(
    params: &Value,
    objective: XgboostObjective,
    groups: usize,
) -> Result<Vec<f32>, LoadError> {
    let text = params["base_score"]
        .as_str()
        .ok_or_else(|| bad("no base_score"))?;
    let values: Vec<f32> = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("base_score '{text}'")))?;
    let values = match values.len() {
        1 => vec![values[0]; groups],
        n if n == groups => values,
        n => return Err(bad(format!("{n} base scores for {groups} outputs"))),
    };
    Ok(values
        .into_iter()
        .map(|p| match objective {
            // ProbToMargin of the logistic objectives.
            XgboostObjective::BinaryLogistic | XgboostObjective::RegLogistic => {
                -(1.0f32 / p - 1.0).ln()
            }
            _ => p,
        })
        .collect())
}

fn param(params: &Value, key: &str) -> Result<usize, LoadError> {
    let v = &params[key];
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64().map(|n| n as usize))
        .ok_or_else(|| bad(format!("learner_model_param.{key} is {v}")))
}

fn read_tree(tree: &Value, t: usize, group: u32) -> Result<Tree, LoadError> {
    let leaf_vector = tree["tree_param"]["size_leaf_vector"]
        .as_str()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1);
    if leaf_vector > 1 {
        return Err(LoadError::unsupported(format!(
            "tree {t} has vector leaves (multi_strategy)"
        )));
    }
    let ints = |key: &str| -> Result<Vec<i64>, LoadError> {
        tree[key]
            .as_array()
            .ok_or_else(|| bad(format!("tree {t} has no '{key}'")))?
            .iter()
            .map(|v| {
                v.as_i64()
                    .or_else(|| v.as_bool().map(|b| b as i64))
                    .ok_or_else(|| bad(format!("tree {t}: '{key}' has {v}")))
            })
            .collect()
    };
    let left = ints("left_children")?;
    let right = ints("right_children")?;
    let feature = ints("split_indices")?;
    let default_left = ints("default_left")?;
    let split_type = ints("split_type").unwrap_or_default();
    let conditions: Vec<f32> = tree["split_conditions"]
        .as_array()
        .ok_or_else(|| bad(format!("tree {t} has no split_conditions")))?
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| bad(format!("tree {t}: split condition {v}")))
        })
        .collect::<Result<_, _>>()?;
    let n = left.len();
    for (name, len) in [
        ("right_children", right.len()),
        ("split_indices", feature.len()),
        ("default_left", default_left.len()),
        ("split_conditions", conditions.len()),
    ] {
        if len != n {
            return Err(bad(format!(
                "tree {t}: {name} has {len} entries for {n} nodes"
            )));
        }
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        if left[i] == -1 {
            nodes.push(Node::Leaf(vec![(group, conditions[i] as f64)]));
            continue;
        }
        if split_type.get(i).is_some_and(|&s| s != 0) {
            return Err(LoadError::unsupported(format!(
                "tree {t} node {i} is a categorical split"
            )));
        }
        let child = |c: i64| {
            usize::try_from(c)
                .ok()
                .filter(|&c| c < n)
                .ok_or_else(|| bad(format!("tree {t} node {i} has child {c}")))
        };
        let f = u32::try_from(feature[i])
            .map_err(|_| bad(format!("tree {t} node {i} reads feature {}", feature[i])))?;
        nodes.push(Node::Branch(Branch {
            feature: f,
            threshold: conditions[i] as f64,
            op: Op::Lt,
            nan_true: default_left[i] != 0,
            zero_is_missing: false,
            true_child: child(left[i])?,
            false_child: child(right[i])?,
        }));
    }
    Ok(Tree { nodes })
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

    fn model(tree: &str) -> String {
        format!(
            r#"{{"learner": {{"gradient_booster": {{"name": "gbtree", "model": {{"trees": [{tree}], "tree_info": [0]}}}},
              "learner_model_param": {{"base_score": "5E-1", "num_class": "0", "num_target": "1"}},
              "objective": {{"name": "binary:logistic"}}}}, "version": [3, 2, 0]}}"#
        )
    }

    const TREE: &str = r#"{"left_children": [1, -1, -1], "right_children": [2, -1, -1],
        "split_indices": [1, 0, 0], "split_conditions": [0.5, -1.0, 1.0],
        "default_left": [1, 0, 0], "split_type": [0, 0, 0],
        "tree_param": {"size_leaf_vector": "1"}}"#;

    #[test]
    fn a_small_model_loads() {
        let m = TreeModel::from_xgboost_json(&model(TREE), input()).unwrap();
        let mut out = crate::Outputs::new();
        // NaN goes left (default_left); 0.7 is not < 0.5: right.
        m.predict(&[0.0, f32::NAN, 0.0, 0.7], 2, &mut out).unwrap();
        assert_eq!(out.labels, vec![0, 1]);
    }

    #[test]
    fn bad_files_are_refused() {
        let cases = [
            (
                model(&TREE.replace("[1, -1, -1]", "[9, -1, -1]")),
                "has child 9",
            ),
            (
                model(&TREE.replace("[1, -1, -1]", "[0, -1, -1]")),
                "points to itself",
            ),
            (
                model(&TREE.replace("[0.5, -1.0, 1.0]", "[0.5, -1.0]")),
                "split_conditions has 2",
            ),
            (
                model(&TREE.replace("\"split_type\": [0", "\"split_type\": [1")),
                "categorical",
            ),
            (
                model(&TREE.replace("[1, 0, 0]", "[7, 0, 0]")),
                "reads feature 7",
            ),
            (
                model(TREE).replace("binary:logistic", "rank:pairwise"),
                "objective",
            ),
            (model(TREE).replace("gbtree", "dart"), "dart"),
            (model(TREE)[..40].to_string(), "XGBoost JSON"),
        ];
        for (text, reason) in cases {
            let Err(e) = TreeModel::from_xgboost_json(&text, input()) else {
                panic!("loaded a model that should be refused ({reason})");
            };
            assert!(
                e.to_string().contains(reason),
                "expected '{reason}', got: {e}"
            );
        }
    }
}
