//! Data expectations at the door: per feature (a column of a model's 2-D input), the range,
//! NaN and allowed-values rules a request's values must meet, declared in `model.toml`'s
//! `[expectations]` table or derived from the version's `profile.json`.
//!
//! Built once when a version loads, into flat per-column tables in the input's own element
//! type ([`Expectations`]); on the request path a check is two comparisons per value (NaN
//! fails both, so it costs nothing extra) plus a binary search per categorical column, and it
//! allocates only when a value breaks a rule. A version without the table has no
//! `Expectations` at all.

mod config;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::Path;

use metrics::Counter;
use serde::Serialize;

pub use config::{Derive, ExpectationsConfig, FeatureExpectation, OnViolation};

use crate::drift::profile::{self, FeatureProfile, Profile};
use crate::telemetry::metrics as m;
use sluice_core::error::{ServeError, ServeResult};
use sluice_core::tensor::{DataType, ModelSignature, Tensor, TensorData};

/// Violations kept for a flagged request's log record; the rest are only counted.
pub const SHOWN_VIOLATIONS: usize = 10;

/// The rule a value broke; also the `rule` label of `sluice_expectation_violations_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Min,
    Max,
    Nan,
    Allowed,
}

const RULES: [Rule; 4] = [Rule::Min, Rule::Max, Rule::Nan, Rule::Allowed];

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Min => "min",
            Rule::Max => "max",
            Rule::Nan => "nan",
            Rule::Allowed => "allowed",
        }
    }
}

/// One value that broke a rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub row: usize,
    pub feature: String,
    pub rule: Rule,
    /// The value sent (`null` in JSON for a NaN).
    pub value: f64,
}

/// What a flagged request broke: every violation counted, the first few kept. Empty (and
/// not allocated) for a request that met every rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Flagged {
    /// Values that broke a rule (a value breaks at most one range rule and the allowed rule).
    pub violations: u64,
    /// The first [`SHOWN_VIOLATIONS`], in row order.
    pub first: Vec<Violation>,
}

impl Flagged {
    pub fn is_empty(&self) -> bool {
        self.violations == 0
    }
}

/// Where a rule came from, for the client's message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    ModelToml,
    /// Derived from the profile; the margin used.
    Profile(f64),
}

/// One column's rules in readable form (messages, tests); the hot path uses [`Table`].
#[derive(Clone, Debug, PartialEq)]
struct Column {
    name: String,
    min: Option<(f64, Source)>,
    max: Option<(f64, Source)>,
    /// `Some` when NaN breaks a rule.
    nan: Option<Source>,
    allowed: Option<(Vec<f64>, Source)>,
    /// The training range, for messages about derived bounds.
    range: Option<(f64, f64)>,
}

/// The per-column rules in the input's element type: `lo[j] <= x <= hi[j]` (infinite when
/// unbounded), whether NaN passes, and the sorted allowed values of categorical columns.
struct Table<V> {
    lo: Vec<V>,
    hi: Vec<V>,
    nan_ok: Vec<bool>,
    allowed: Vec<(usize, Allowed<V>)>,
}

/// A categorical column's values: a bit mask when they are integers within 64 of each other
/// (codes, flags, small counts: one subtraction and a shift), else sorted for a binary search.
enum Allowed<V> {
    Bits { base: f64, mask: u64 },
    Sorted(Vec<V>),
}

impl<V: Value> Allowed<V> {
    fn new(sorted: &[f64]) -> Allowed<V> {
        let base = sorted.first().copied().unwrap_or(0.0);
        let fits = sorted
            .iter()
            .all(|&v| v.fract() == 0.0 && (0.0..64.0).contains(&(v - base)));
        if fits {
            let mask = sorted
                .iter()
                .fold(0u64, |m, &v| m | 1 << ((v - base) as u32));
            Allowed::Bits { base, mask }
        } else {
            Allowed::Sorted(sorted.iter().map(|&v| V::from_f64(v)).collect())
        }
    }

    /// Whether `x` (not NaN) is one of the values.
    fn contains(&self, x: V) -> bool {
        match self {
            Allowed::Bits { base, mask } => {
                let k = x.into() - base;
                // A cast, not `fract()`: that is a libm call on baseline x86-64.
                let i = k as u32;
                (0.0..64.0).contains(&k) && f64::from(i) == k && mask >> i & 1 == 1
            }
            Allowed::Sorted(values) => values
                .binary_search_by(|v| v.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Less))
                .is_ok(),
        }
    }
}

/// A numeric element type a table can be kept in.
trait Value: Copy + PartialOrd + Into<f64> {
    const INFINITY: Self;
    fn from_f64(v: f64) -> Self;
}

impl Value for f32 {
    const INFINITY: f32 = f32::INFINITY;
    /// Bounds are rounded to the nearest f32, so that `max = 0.1` admits the FP32 value 0.1.
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

impl Value for f64 {
    const INFINITY: f64 = f64::INFINITY;
    fn from_f64(v: f64) -> f64 {
        v
    }
}

impl<V: Value> Table<V> {
    fn new(columns: &[Column]) -> Table<V> {
        let bound = |b: &Option<(f64, Source)>, unbounded: V| {
            b.as_ref().map_or(unbounded, |(v, _)| V::from_f64(*v))
        };
        let negative = V::from_f64(f64::NEG_INFINITY);
        Table {
            lo: columns.iter().map(|c| bound(&c.min, negative)).collect(),
            hi: columns.iter().map(|c| bound(&c.max, V::INFINITY)).collect(),
            nan_ok: columns.iter().map(|c| c.nan.is_none()).collect(),
            allowed: columns
                .iter()
                .enumerate()
                .filter_map(|(j, c)| {
                    let (values, _) = c.allowed.as_ref()?;
                    Some((j, Allowed::new(values)))
                })
                .collect(),
        }
    }

    /// Calls `found(row, column, value, rule)` for every broken rule, row by row, until it
    /// returns false.
    fn scan<T: Copy>(
        &self,
        values: &[T],
        to: impl Fn(T) -> V,
        found: &mut impl FnMut(usize, usize, V, Rule) -> bool,
    ) {
        let width = self.lo.len();
        for (r, row) in values.chunks_exact(width).enumerate() {
            // First without branches (the compiler vectorises it), since nearly every row
            // passes; only a row that breaks a range or NaN rule is walked value by value.
            let mut bad = false;
            for (((&x, &lo), &hi), &nan_ok) in
                row.iter().zip(&self.lo).zip(&self.hi).zip(&self.nan_ok)
            {
                let x = to(x);
                #[allow(clippy::eq_op)] // x != x: NaN, for f32 and f64 alike
                let nan = x != x;
                bad |= !((x >= lo) & (x <= hi)) & !(nan & nan_ok);
            }
            if bad {
                for (j, ((&x, &lo), &hi)) in row.iter().zip(&self.lo).zip(&self.hi).enumerate() {
                    let x = to(x);
                    // NaN fails both comparisons: one branch covers all three rules.
                    if !(x >= lo && x <= hi) {
                        #[allow(clippy::eq_op)] // x != x: NaN, for f32 and f64 alike
                        let rule = if x != x {
                            if self.nan_ok[j] {
                                continue;
                            }
                            Rule::Nan
                        } else if x < lo {
                            Rule::Min
                        } else {
                            Rule::Max
                        };
                        if !found(r, j, x, rule) {
                            return;
                        }
                    }
                }
            }
            for (j, allowed) in &self.allowed {
                let x = to(row[*j]);
                #[allow(clippy::eq_op)]
                let nan = x != x;
                if !nan && !allowed.contains(x) && !found(r, *j, x, Rule::Allowed) {
                    return;
                }
            }
        }
    }
}

/// One version's expectations, ready for the request path.
pub struct Expectations {
    input: String,
    reject: bool,
    columns: Vec<Column>,
    f32: Table<f32>,
    f64: Table<f64>,
    /// `sluice_expectation_violations_total` per column and rule (indexed by [`RULES`]),
    /// registered at load for the rules the column has.
    counters: Vec<[Option<Counter>; 4]>,
}

impl std::fmt::Debug for Expectations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expectations")
            .field("input", &self.input)
            .field("reject", &self.reject)
            .field("columns", &self.columns.len())
            .finish_non_exhaustive()
    }
}

/// What the loader knows of a model's inputs from `model.toml`: each input's declared feature
/// names (empty when it names none).
pub type DeclaredFeatures<'a> = &'a [(&'a str, &'a [String])];

/// The expectations of the version in `version_dir`: `None` without an `[expectations]`
/// table; an error (which refuses the load) when the table does not fit the model or its
/// profile, or derives from a profile the version lacks.
pub fn for_version(
    model: &str,
    version: u64,
    version_dir: &Path,
    config: Option<&ExpectationsConfig>,
    signature: &ModelSignature,
    declared: DeclaredFeatures<'_>,
) -> Result<Option<Expectations>, String> {
    let Some(config) = config else {
        return Ok(None);
    };
    let profile = match config.derive {
        None => None,
        Some(Derive::Profile) => {
            let path = version_dir.join(profile::FILE_NAME);
            if !path.is_file() {
                return Err(format!(
                    "expectations.derive = \"profile\" but version {version} has no {}; build \
                     one with `sluice profile`",
                    profile::FILE_NAME
                ));
            }
            Some(Profile::read(&path).map_err(|e| e.to_string())?)
        }
    };
    Expectations::build(
        model,
        version,
        config,
        profile.as_ref(),
        signature,
        declared,
    )
    .map(Some)
}

impl Expectations {
    /// Resolves the input and its feature names, derives and overrides every column's rules,
    /// and registers the violation counters. Every problem is named.
    pub fn build(
        model: &str,
        version: u64,
        config: &ExpectationsConfig,
        profile: Option<&Profile>,
        signature: &ModelSignature,
        declared: DeclaredFeatures<'_>,
    ) -> Result<Expectations, String> {
        let input = choose_input(config, profile, signature, declared)?;
        let spec = signature
            .inputs
            .iter()
            .find(|s| s.name == input)
            .ok_or_else(|| format!("expectations.input: the model has no input '{input}'"))?;
        if spec.shape.len() != 2 || !numeric(spec.datatype) {
            return Err(format!(
                "expectations: input '{input}' is {} {}; expectations need a 2-D FP32, FP64 or \
                 integer input",
                spec.datatype,
                sluice_core::tensor::format_dims(&spec.shape)
            ));
        }
        let declared_names = declared
            .iter()
            .find(|(name, _)| *name == input)
            .map(|(_, names)| *names)
            .filter(|names| !names.is_empty());
        let from_profile = profile.filter(|p| p.input == input);
        if let Some(p) = profile
            && p.input != input
        {
            return Err(format!(
                "expectations: the profile describes input '{}', not '{input}'",
                p.input
            ));
        }
        let width = match (spec.shape[1], declared_names, from_profile) {
            (w, _, _) if w >= 0 => w as usize,
            (_, Some(names), _) => names.len(),
            (_, None, Some(p)) => p.features.len(),
            _ => {
                return Err(format!(
                    "expectations: input '{input}' has a dynamic width; name its features in \
                     model.toml (inputs = [{{ name = \"{input}\", ..., features = [...] }}])"
                ));
            }
        };
        if let Some(p) = from_profile
            && p.features.len() != width
        {
            return Err(format!(
                "expectations: input '{input}' has {width} features, the profile {}",
                p.features.len()
            ));
        }
        let names: Vec<String> = match (declared_names, from_profile) {
            (Some(names), _) => names.to_vec(),
            (None, Some(p)) => p.features.iter().map(|f| f.name.clone()).collect(),
            (None, None) => (0..width).map(|j| format!("f{j}")).collect(),
        };
        let unknown: Vec<&str> = config
            .features
            .keys()
            .filter(|k| !names.contains(k))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "expectations.features: no feature {} in input '{input}' (its features: {})",
                quoted(&unknown),
                abbreviated(&names)
            ));
        }
        let mut columns = Vec::with_capacity(width);
        for (j, name) in names.into_iter().enumerate() {
            let derived = from_profile.map(|p| derive(&p.features[j], config));
            let mut column = derived.unwrap_or_else(|| Column {
                name: name.clone(),
                min: None,
                max: None,
                nan: None,
                allowed: None,
                range: None,
            });
            column.name = name;
            if let Some(rule) = config.features.get(&column.name) {
                apply(&mut column, rule);
            }
            if let (Some((min, _)), Some((max, _))) = (column.min, column.max)
                && min > max
            {
                return Err(format!(
                    "expectations.features.{}: min {min} is above the maximum {max}",
                    column.name
                ));
            }
            columns.push(column);
        }
        let counters = columns
            .iter()
            .map(|c| counters(model, version, c))
            .collect();
        Ok(Expectations {
            input,
            reject: config.on_violation == OnViolation::Reject,
            f32: Table::new(&columns),
            f64: Table::new(&columns),
            columns,
            counters,
        })
    }

    /// The feature names, in column order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// Checks the request's feature input (`inputs` validated against the signature, in any
    /// order). Reject: the first broken rule is a 400 naming input, row, feature and rule.
    /// Flag: every violation is counted and the first few are kept in `flagged`. Both count
    /// what they found in `sluice_expectation_violations_total` (reject: the one violation
    /// the request was refused for).
    pub fn check(&self, inputs: &[Tensor], flagged: &mut Flagged) -> ServeResult<()> {
        let Some(t) = inputs.iter().find(|t| t.name == self.input) else {
            return Ok(());
        };
        let width = self.columns.len();
        if t.shape.len() != 2 || t.shape[1] != width || width == 0 {
            return Ok(());
        }
        let mut refused = None;
        let narrow = t.datatype() == DataType::F32;
        let mut found = |row: usize, column: usize, value: f64, rule: Rule| {
            if let Some(counter) = &self.counters[column][rule as usize] {
                counter.increment(1);
            }
            if self.reject {
                refused = Some((row, column, value, rule));
                return false;
            }
            flagged.violations += 1;
            if flagged.first.len() < SHOWN_VIOLATIONS {
                flagged.first.push(Violation {
                    row,
                    feature: self.columns[column].name.clone(),
                    rule,
                    // An FP32 value as the client wrote it (0.1, not 0.10000000149011612).
                    value: if narrow { shortest_f32(value) } else { value },
                });
            }
            true
        };
        match &t.data {
            TensorData::F32(v) => self.f32.scan(v, |x| x, &mut |r, j, x: f32, rule| {
                found(r, j, f64::from(x), rule)
            }),
            TensorData::F64(v) => self.f64.scan(v, |x| x, &mut found),
            TensorData::I64(v) => self.f64.scan(v, |x| x as f64, &mut found),
            TensorData::I32(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::I16(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::I8(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::U64(v) => self.f64.scan(v, |x| x as f64, &mut found),
            TensorData::U32(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::U16(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::U8(v) => self.f64.scan(v, f64::from, &mut found),
            TensorData::Bool(_) | TensorData::Bytes(_) => {}
        }
        match refused {
            Some((row, column, value, rule)) => {
                let shown = if narrow {
                    format!("{}", value as f32)
                } else {
                    format!("{value}")
                };
                Err(ServeError::bad_request(
                    self.message(row, column, &shown, rule),
                ))
            }
            None => Ok(()),
        }
    }

    /// `input 'input' row 3 feature 'tenure': 1200 is above the expected maximum 96.5
    /// (model.toml expectations)`.
    fn message(&self, row: usize, column: usize, value: &str, rule: Rule) -> String {
        let c = &self.columns[column];
        let mut text = format!("input '{}' row {row} feature '{}': ", self.input, c.name);
        let source = match rule {
            Rule::Min => {
                let (min, source) = c.min.unwrap_or((f64::NEG_INFINITY, Source::ModelToml));
                let _ = write!(text, "{value} is below the expected minimum {min}");
                source
            }
            Rule::Max => {
                let (max, source) = c.max.unwrap_or((f64::INFINITY, Source::ModelToml));
                let _ = write!(text, "{value} is above the expected maximum {max}");
                source
            }
            Rule::Nan => {
                text.push_str("NaN (a missing value) is not expected");
                c.nan.unwrap_or(Source::ModelToml)
            }
            Rule::Allowed => {
                let (allowed, source) = c
                    .allowed
                    .as_ref()
                    .map(|(v, s)| (v.as_slice(), *s))
                    .unwrap_or((&[], Source::ModelToml));
                let shown: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
                let _ = write!(
                    text,
                    "{value} is not one of the expected values [{}]",
                    abbreviated(&shown)
                );
                source
            }
        };
        match (source, rule, c.range) {
            (Source::ModelToml, _, _) => text.push_str(" (model.toml expectations)"),
            (Source::Profile(_), Rule::Nan, _) => {
                text.push_str(" (the training sample in profile.json had none)")
            }
            (Source::Profile(_), Rule::Allowed, _) => {
                text.push_str(" (the training sample's values, profile.json)")
            }
            (Source::Profile(margin), _, Some((lo, hi))) => {
                let _ = write!(
                    text,
                    " (training range {lo} to {hi} in profile.json, widened by margin {margin})"
                );
            }
            (Source::Profile(_), _, None) => text.push_str(" (profile.json)"),
        }
        text
    }
}

/// The f64 whose shortest decimal form is that of the f32 `value` holds.
fn shortest_f32(value: f64) -> f64 {
    (value as f32).to_string().parse().unwrap_or(value)
}

fn numeric(datatype: DataType) -> bool {
    !matches!(datatype, DataType::Bool | DataType::Bytes)
}

/// The input named in the table, else the profile's, else the one `model.toml` names features
/// for, else the first 2-D numeric input.
fn choose_input(
    config: &ExpectationsConfig,
    profile: Option<&Profile>,
    signature: &ModelSignature,
    declared: DeclaredFeatures<'_>,
) -> Result<String, String> {
    if let Some(name) = &config.input {
        return Ok(name.clone());
    }
    if let Some(p) = profile {
        return Ok(p.input.clone());
    }
    if let Some((name, _)) = declared.iter().find(|(_, names)| !names.is_empty()) {
        return Ok(name.to_string());
    }
    signature
        .inputs
        .iter()
        .find(|s| s.shape.len() == 2 && numeric(s.datatype))
        .map(|s| s.name.clone())
        .ok_or_else(|| {
            "expectations: the model has no 2-D FP32, FP64 or integer input to check".to_string()
        })
}

/// A column's rules from its training profile.
fn derive(feature: &FeatureProfile, config: &ExpectationsConfig) -> Column {
    let (lo, hi) = feature.range();
    let source = Source::Profile(config.margin);
    let widen = config.margin * (hi - lo);
    let allowed = feature
        .distinct_values
        .as_ref()
        .filter(|v| v.len() <= config.categorical_values)
        .map(|v| (v.clone(), source));
    Column {
        name: feature.name.clone(),
        min: Some((lo - widen, source)),
        max: Some((hi + widen, source)),
        // A profile that does not say whether training had NaNs (written by an older sluice)
        // gets no NaN rule: better unchecked than refusing what training may have held.
        nan: (feature.nan_rows == Some(0)).then_some(source),
        allowed,
        range: Some((lo, hi)),
    }
}

/// Replaces the derived rules `rule` names.
fn apply(column: &mut Column, rule: &FeatureExpectation) {
    let unbounded = |v: f64| v.is_infinite();
    if let Some(min) = rule.min {
        column.min = (!unbounded(min)).then_some((min, Source::ModelToml));
    }
    if let Some(max) = rule.max {
        column.max = (!unbounded(max)).then_some((max, Source::ModelToml));
    }
    if let Some(allow) = rule.allow_nan {
        column.nan = (!allow).then_some(Source::ModelToml);
    }
    if let Some(allowed) = &rule.allowed {
        let mut values = allowed.clone();
        values.sort_by(f64::total_cmp);
        values.dedup_by(|a, b| a == b);
        column.allowed = (!values.is_empty()).then_some((values, Source::ModelToml));
    }
}

/// The violation counters of one column's rules.
fn counters(model: &str, version: u64, column: &Column) -> [Option<Counter>; 4] {
    RULES.map(|rule| {
        let has = match rule {
            Rule::Min => column.min.is_some(),
            Rule::Max => column.max.is_some(),
            Rule::Nan => column.nan.is_some(),
            Rule::Allowed => column.allowed.is_some(),
        };
        has.then(|| {
            let counter = m::expectation_violations(model, version, &column.name, rule.as_str());
            // Exported at 0 from the start, so that `increase()` sees the first violation.
            counter.increment(0);
            counter
        })
    })
}

fn quoted(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    quoted.join(", ")
}

/// The first few of a long list, e.g. `a, b, c, ... (64 in all)`.
fn abbreviated(items: &[String]) -> String {
    const SHOWN: usize = 12;
    if items.len() <= SHOWN {
        return items.join(", ");
    }
    format!(
        "{}, ... ({} in all)",
        items[..SHOWN].join(", "),
        items.len()
    )
}
