//! Live quality: how right a version's answers were, once their ground-truth outcomes arrive.
//!
//! A prediction is kept in a compact form ([`Predicted`]: the label, the class probabilities,
//! or the regression value of each row) until its outcome joins it; each joined outcome adds
//! to the (version, variant)'s [`QualityWindow`]: running totals (what the guard marks and
//! compares) and time slots (what the stats endpoint reads over a span).
//!
//! - Classifiers: accuracy; log loss −ln p(true class) (p clipped to [1e-15, 1]); the Brier
//!   score, (p₁ − y)² for two classes (scikit-learn's `brier_score_loss`) and Σₖ (pₖ − yₖ)² for
//!   more; ROC AUC for two classes from 1,024 bins of the positive class's probability on the
//!   logit scale (ties within a bin count one half, as in the exact rank statistic; the bins
//!   are fine enough near 0 and 1 that the binned value is within 0.01 of the exact one).
//!   The probability metrics need an output that is a probability row (each value in [0, 1],
//!   summing to 1 within 1e-3); without one they are absent, not made up.
//! - Regressors: MAE and RMSE.
//! - Rewards (a conversion, a click): their count and mean, for any model.
//!
//! Outcomes arrive off the request path (the outcomes endpoint or topic), so recording takes a
//! short mutex per window; the request path never touches a window.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use sluice_core::Variant;
use sluice_core::tensor::{Tensor, TensorData};

/// Rows of one request kept for the join; outcomes for later rows are unknown.
pub const MAX_KEPT_ROWS: usize = 256;
/// Width of one time slot of a quality window.
const SLOT: Duration = Duration::from_secs(10);
/// Slots kept: the longest span a query covers (5 minutes).
const SLOTS: usize = 30;
/// AUC bins over logit(p) in [-LOGIT_RANGE, LOGIT_RANGE].
pub const AUC_BINS: usize = 1024;
const LOGIT_RANGE: f64 = 9.0;
/// A row is a probability row when its values are in [0, 1] and sum to 1 within this.
const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;
/// log(0) guard, as in scikit-learn's log loss.
const PROBABILITY_FLOOR: f64 = 1e-15;

/// Labels of a request's rows: one inline (batch 1, the usual case), more on the heap.
pub type Labels = smallvec::SmallVec<[i64; 1]>;
/// Scores of a request's rows: up to four inline (a two-class row, a regressor's value).
pub type Scores = smallvec::SmallVec<[f32; 4]>;

/// What a version answered for the rows of one request, kept until outcomes join it. Small
/// answers are held inline: the index holds many of these, and each request makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct Predicted {
    /// Rows kept (at most [`MAX_KEPT_ROWS`]).
    pub rows: usize,
    /// One label per row, for classifiers.
    pub labels: Option<Labels>,
    /// Row-major scores: class probabilities (`width` per row) for classifiers with a
    /// probability output, or the predicted value (`width` = 1) for regressors.
    pub scores: Option<Scores>,
    pub width: usize,
    /// Whether `scores` are class probabilities (rather than a regression value).
    pub probabilities: bool,
}

/// One row's prediction, as the join sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowPrediction<'a> {
    Class {
        label: i64,
        probabilities: Option<&'a [f32]>,
    },
    Value(f64),
    /// Nothing the outcome kinds can be compared with (only rewards apply).
    Opaque,
}

fn one_per_row(t: &Tensor, rows: usize) -> bool {
    t.shape.first() == Some(&rows) && t.data.len() == rows
}

/// The first `n` values of a float tensor, as f32.
fn floats(t: &Tensor, n: usize) -> Option<Scores> {
    match &t.data {
        TensorData::F32(v) => Some(Scores::from_slice(v.get(..n)?)),
        TensorData::F64(v) => Some(v.get(..n)?.iter().map(|&x| x as f32).collect()),
        _ => None,
    }
}

fn is_probability_row(row: &[f32]) -> bool {
    let sum: f64 = row.iter().map(|&p| f64::from(p)).sum();
    row.iter().all(|&p| (0.0..=1.0).contains(&p)) && (sum - 1.0).abs() <= PROBABILITY_SUM_TOLERANCE
}

impl Predicted {
    /// Reads the answer of a version (all its outputs, signature order): the label is the
    /// first integer output with one value per row; the scores are the first floating-point
    /// output. A float output of `k ≥ 2` columns is a classifier's probabilities (its arg max
    /// is the label when no integer output names one); one value per row without a label is a
    /// regressor's prediction; one value per row beside a label is the positive class's
    /// probability of a two-class model.
    pub fn from_outputs(outputs: &[Tensor], rows: usize) -> Predicted {
        let kept = rows.min(MAX_KEPT_ROWS);
        let labels: Option<Labels> = outputs
            .iter()
            .find(|t| {
                one_per_row(t, rows) && matches!(t.data, TensorData::I64(_) | TensorData::I32(_))
            })
            .and_then(|t| match &t.data {
                TensorData::I64(v) => Some(Labels::from_slice(&v[..kept])),
                TensorData::I32(v) => Some(v[..kept].iter().map(|&l| i64::from(l)).collect()),
                _ => None,
            });
        let scores = outputs
            .iter()
            .find(|t| matches!(t.data, TensorData::F32(_) | TensorData::F64(_)))
            .filter(|t| t.shape.first() == Some(&rows) && rows > 0)
            .and_then(|t| {
                let width = t.data.len() / rows;
                floats(t, kept * width).map(|v| (width, v))
            });
        let Some((width, values)) = scores else {
            return Predicted {
                rows: kept,
                labels,
                scores: None,
                width: 0,
                probabilities: false,
            };
        };
        if width == 1 && labels.is_some() {
            // p(class 1) of a two-class model: spelled out as a probability row.
            let binary = values.iter().all(|p| (0.0..=1.0).contains(p));
            let rows2: Scores = values.iter().flat_map(|&p| [1.0 - p, p]).collect();
            return Predicted {
                rows: kept,
                labels,
                scores: binary.then_some(rows2),
                width: if binary { 2 } else { 0 },
                probabilities: binary,
            };
        }
        if width == 1 {
            return Predicted {
                rows: kept,
                labels: None,
                scores: Some(values),
                width: 1,
                probabilities: false,
            };
        }
        let probabilities = values.chunks(width).all(is_probability_row);
        let labels = labels.or_else(|| {
            Some(
                values
                    .chunks(width)
                    .map(|row| arg_max(row) as i64)
                    .collect(),
            )
        });
        Predicted {
            rows: kept,
            labels,
            scores: probabilities.then_some(values),
            width: if probabilities { width } else { 0 },
            probabilities,
        }
    }

    /// Row `row`'s prediction; `None` beyond the rows kept.
    pub fn row(&self, row: usize) -> Option<RowPrediction<'_>> {
        if row >= self.rows {
            return None;
        }
        let scores = self
            .scores
            .as_deref()
            .map(|s| &s[row * self.width..(row + 1) * self.width]);
        Some(match (&self.labels, scores) {
            (Some(labels), scores) => RowPrediction::Class {
                label: labels[row],
                probabilities: scores.filter(|_| self.probabilities),
            },
            (None, Some(value)) if !self.probabilities => RowPrediction::Value(f64::from(value[0])),
            _ => RowPrediction::Opaque,
        })
    }
}

fn arg_max(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// What a version's outputs can be judged on, read from its signature: a class (an integer
/// output, or a float output of two or more columns) or a value (a float output of one value
/// per row, with no integer output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    Class,
    Value,
    /// Neither: only rewards apply.
    Other,
}

impl OutputKind {
    pub fn of(signature: &sluice_core::tensor::ModelSignature) -> OutputKind {
        use sluice_core::tensor::DataType;
        let outputs = &signature.outputs;
        if outputs
            .iter()
            .any(|o| matches!(o.datatype, DataType::I64 | DataType::I32))
        {
            return OutputKind::Class;
        }
        let Some(scores) = outputs
            .iter()
            .find(|o| matches!(o.datatype, DataType::F32 | DataType::F64))
        else {
            return OutputKind::Other;
        };
        let columns: i64 = scores.shape.iter().skip(1).product();
        if scores.shape.len() <= 1 || columns == 1 {
            OutputKind::Value
        } else {
            // Dynamic (-1) or several columns: class scores.
            OutputKind::Class
        }
    }

    /// Whether an outcome of this kind can judge such outputs.
    pub fn accepts(self, truth: &Truth) -> bool {
        matches!(
            (self, truth),
            (_, Truth::Reward(_))
                | (OutputKind::Class, Truth::Label(_))
                | (OutputKind::Value, Truth::Value(_))
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Class => "classes",
            OutputKind::Value => "values",
            OutputKind::Other => "neither classes nor values",
        }
    }
}

/// A ground-truth outcome for one row.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Truth {
    /// The true class.
    Label(i64),
    /// The true value of a regression target.
    Value(f64),
    /// A business reward (a conversion, revenue), for any model.
    Reward(f64),
}

/// What one joined outcome said about its prediction (also written to the joined record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Scored {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<f64>,
}

/// Why an outcome cannot be compared with its prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// A label for a prediction with no label (a regressor's), or a value for a classifier's.
    Kind,
}

/// Scores one outcome against one row's prediction.
pub fn score(prediction: RowPrediction<'_>, truth: Truth) -> Result<Scored, Mismatch> {
    match (truth, prediction) {
        (Truth::Reward(_), _) => Ok(Scored::default()),
        (
            Truth::Label(y),
            RowPrediction::Class {
                label,
                probabilities,
            },
        ) => {
            let mut scored = Scored {
                correct: Some(label == y),
                ..Scored::default()
            };
            if let Some(p) = probabilities {
                let truth_index = usize::try_from(y).ok().filter(|&i| i < p.len());
                let p_true = truth_index.map_or(0.0, |i| f64::from(p[i]));
                scored.log_loss = Some(-p_true.clamp(PROBABILITY_FLOOR, 1.0).ln());
                scored.brier = Some(if p.len() == 2 {
                    let y1 = if truth_index == Some(1) { 1.0 } else { 0.0 };
                    (f64::from(p[1]) - y1).powi(2)
                } else {
                    p.iter()
                        .enumerate()
                        .map(|(k, &pk)| {
                            let yk = if Some(k) == truth_index { 1.0 } else { 0.0 };
                            (f64::from(pk) - yk).powi(2)
                        })
                        .sum()
                });
            }
            Ok(scored)
        }
        (Truth::Value(y), RowPrediction::Value(v)) => Ok(Scored {
            error: Some(v - y),
            ..Scored::default()
        }),
        _ => Err(Mismatch::Kind),
    }
}

/// Running sums of joined outcomes: what a window holds, and what the guard compares.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QualityTotals {
    /// Outcomes joined (every kind).
    pub outcomes: u64,
    /// Label outcomes, and how many the prediction got right.
    pub labeled: u64,
    pub correct: u64,
    /// Label outcomes whose prediction had class probabilities.
    pub probability_rows: u64,
    pub log_loss_sum: f64,
    pub brier_sum: f64,
    /// Value outcomes (regression targets).
    pub valued: u64,
    pub abs_error_sum: f64,
    pub squared_error_sum: f64,
    pub rewards: u64,
    pub reward_sum: f64,
    pub reward_squares: f64,
}

impl QualityTotals {
    fn add(&mut self, truth: Truth, scored: &Scored) {
        self.outcomes += 1;
        match truth {
            Truth::Label(_) => {
                self.labeled += 1;
                self.correct += u64::from(scored.correct == Some(true));
                if let (Some(l), Some(b)) = (scored.log_loss, scored.brier) {
                    self.probability_rows += 1;
                    self.log_loss_sum += l;
                    self.brier_sum += b;
                }
            }
            Truth::Value(_) => {
                if let Some(e) = scored.error {
                    self.valued += 1;
                    self.abs_error_sum += e.abs();
                    self.squared_error_sum += e * e;
                }
            }
            Truth::Reward(r) => {
                self.rewards += 1;
                self.reward_sum += r;
                self.reward_squares += r * r;
            }
        }
    }

    fn merge(&mut self, o: &QualityTotals) {
        self.outcomes += o.outcomes;
        self.labeled += o.labeled;
        self.correct += o.correct;
        self.probability_rows += o.probability_rows;
        self.log_loss_sum += o.log_loss_sum;
        self.brier_sum += o.brier_sum;
        self.valued += o.valued;
        self.abs_error_sum += o.abs_error_sum;
        self.squared_error_sum += o.squared_error_sum;
        self.rewards += o.rewards;
        self.reward_sum += o.reward_sum;
        self.reward_squares += o.reward_squares;
    }

    /// What was added after `mark` was taken (totals only grow).
    pub fn since(&self, mark: &QualityTotals) -> QualityTotals {
        QualityTotals {
            outcomes: self.outcomes.saturating_sub(mark.outcomes),
            labeled: self.labeled.saturating_sub(mark.labeled),
            correct: self.correct.saturating_sub(mark.correct),
            probability_rows: self.probability_rows.saturating_sub(mark.probability_rows),
            log_loss_sum: (self.log_loss_sum - mark.log_loss_sum).max(0.0),
            brier_sum: (self.brier_sum - mark.brier_sum).max(0.0),
            valued: self.valued.saturating_sub(mark.valued),
            abs_error_sum: (self.abs_error_sum - mark.abs_error_sum).max(0.0),
            squared_error_sum: (self.squared_error_sum - mark.squared_error_sum).max(0.0),
            rewards: self.rewards.saturating_sub(mark.rewards),
            reward_sum: self.reward_sum - mark.reward_sum,
            reward_squares: (self.reward_squares - mark.reward_squares).max(0.0),
        }
    }

    pub fn accuracy(&self) -> Option<f64> {
        ratio(self.correct as f64, self.labeled)
    }

    pub fn reward_mean(&self) -> Option<f64> {
        ratio(self.reward_sum, self.rewards)
    }

    /// The sample variance of the rewards (n − 1 in the denominator).
    pub fn reward_variance(&self) -> Option<f64> {
        let n = self.rewards as f64;
        (self.rewards > 1).then(|| {
            let mean = self.reward_sum / n;
            ((self.reward_squares - n * mean * mean) / (n - 1.0)).max(0.0)
        })
    }
}

fn ratio(sum: f64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum / n as f64)
}

/// Positive and negative counts per bin of the positive class's probability.
#[derive(Clone)]
struct AucBins {
    positive: Box<[u32]>,
    negative: Box<[u32]>,
}

impl AucBins {
    fn new() -> AucBins {
        AucBins {
            positive: vec![0; AUC_BINS].into(),
            negative: vec![0; AUC_BINS].into(),
        }
    }

    fn add(&mut self, p_positive: f32, positive: bool) {
        let bin = auc_bin(f64::from(p_positive));
        let side = if positive {
            &mut self.positive
        } else {
            &mut self.negative
        };
        side[bin] = side[bin].saturating_add(1);
    }

    fn merge(&mut self, o: &AucBins) {
        for (a, b) in self.positive.iter_mut().zip(o.positive.iter()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.negative.iter_mut().zip(o.negative.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// P(score of a positive > score of a negative) + ½ P(same bin).
    fn auc(&self) -> Option<f64> {
        let positives: f64 = self.positive.iter().map(|&n| f64::from(n)).sum();
        let negatives: f64 = self.negative.iter().map(|&n| f64::from(n)).sum();
        if positives == 0.0 || negatives == 0.0 {
            return None;
        }
        let mut below = 0.0; // negatives in lower bins
        let mut wins = 0.0;
        for (&p, &n) in self.positive.iter().zip(self.negative.iter()) {
            let (p, n) = (f64::from(p), f64::from(n));
            wins += p * (below + 0.5 * n);
            below += n;
        }
        Some(wins / (positives * negatives))
    }
}

/// The bin of a probability: uniform in logit(p) over [-9, 9], the ends open.
pub fn auc_bin(p: f64) -> usize {
    if p.is_nan() {
        return 0;
    }
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let logit = (p / (1.0 - p)).ln();
    let position = (logit + LOGIT_RANGE) / (2.0 * LOGIT_RANGE) * AUC_BINS as f64;
    (position.max(0.0) as usize).min(AUC_BINS - 1)
}

/// The exact ROC AUC of scores and labels (the Mann–Whitney statistic, ties one half): the
/// reference the binned one is tested against, and what `sluice profile --labels` stores.
pub fn exact_auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut below_negatives, mut wins) = (0.0, 0.0);
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0.0, 0.0);
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                pos += 1.0;
            } else {
                neg += 1.0;
            }
            j += 1;
        }
        wins += pos * (below_negatives + 0.5 * neg);
        below_negatives += neg;
        i = j;
    }
    let positives = positive.iter().filter(|&&p| p).count() as f64;
    let negatives = positive.len() as f64 - positives;
    (positives > 0.0 && negatives > 0.0).then(|| wins / (positives * negatives))
}

#[derive(Clone)]
struct Slot {
    /// Which slot number (since the window's start) this holds; `None` = empty.
    number: Option<u64>,
    totals: QualityTotals,
    auc: Option<AucBins>,
}

struct Rolling {
    totals: QualityTotals,
    slots: Vec<Slot>,
}

/// Joined outcomes of one (version, variant): running totals and 10-second slots over the last
/// five minutes.
pub struct QualityWindow {
    started: Instant,
    inner: Mutex<Rolling>,
}

impl Default for QualityWindow {
    fn default() -> Self {
        QualityWindow {
            started: Instant::now(),
            inner: Mutex::new(Rolling {
                totals: QualityTotals::default(),
                slots: Vec::new(),
            }),
        }
    }
}

/// A window's numbers over a span, as the stats endpoint and the metrics show them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QualityView {
    pub outcomes: u64,
    pub labeled: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
    pub log_loss: Option<f64>,
    pub brier: Option<f64>,
    pub roc_auc: Option<f64>,
    pub valued: u64,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    pub rewards: u64,
    pub reward_mean: Option<f64>,
}

impl QualityView {
    fn new(t: &QualityTotals, auc: Option<f64>) -> QualityView {
        QualityView {
            outcomes: t.outcomes,
            labeled: t.labeled,
            correct: t.correct,
            accuracy: t.accuracy(),
            log_loss: ratio(t.log_loss_sum, t.probability_rows),
            brier: ratio(t.brier_sum, t.probability_rows),
            roc_auc: auc,
            valued: t.valued,
            mae: ratio(t.abs_error_sum, t.valued),
            rmse: ratio(t.squared_error_sum, t.valued).map(f64::sqrt),
            rewards: t.rewards,
            reward_mean: t.reward_mean(),
        }
    }
}

impl QualityWindow {
    /// Adds one scored outcome; `positive` is the two-class AUC's input (p(class 1), and
    /// whether the true class is 1) when the prediction had two class probabilities.
    pub fn record(&self, truth: Truth, scored: &Scored, positive: Option<(f32, bool)>) {
        self.record_at(Instant::now(), truth, scored, positive);
    }

    fn record_at(&self, at: Instant, truth: Truth, scored: &Scored, positive: Option<(f32, bool)>) {
        let number = self.slot_number(at);
        let Ok(mut rolling) = self.inner.lock() else {
            return;
        };
        rolling.totals.add(truth, scored);
        if rolling.slots.is_empty() {
            rolling.slots = vec![
                Slot {
                    number: None,
                    totals: QualityTotals::default(),
                    auc: None,
                };
                SLOTS
            ];
        }
        let slot = &mut rolling.slots[(number % SLOTS as u64) as usize];
        if slot.number != Some(number) {
            slot.number = Some(number);
            slot.totals = QualityTotals::default();
            if let Some(auc) = &mut slot.auc {
                auc.positive.fill(0);
                auc.negative.fill(0);
            }
        }
        slot.totals.add(truth, scored);
        if let Some((p, is_positive)) = positive {
            slot.auc
                .get_or_insert_with(AucBins::new)
                .add(p, is_positive);
        }
    }

    fn slot_number(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_secs_f64() / SLOT.as_secs_f64()) as u64
    }

    /// Every outcome joined so far: what the guard marks at a step and compares after.
    pub fn totals(&self) -> QualityTotals {
        self.inner
            .lock()
            .map(|r| r.totals.clone())
            .unwrap_or_default()
    }

    /// The numbers over the last `span` (whole 10-second slots, the current one included;
    /// at most five minutes).
    pub fn view(&self, span: Duration) -> QualityView {
        self.view_at(Instant::now(), span)
    }

    fn view_at(&self, now: Instant, span: Duration) -> QualityView {
        let current = self.slot_number(now);
        let covered = (span.as_secs_f64() / SLOT.as_secs_f64()).ceil() as u64;
        let oldest = current.saturating_sub(covered.clamp(1, SLOTS as u64) - 1);
        let Ok(rolling) = self.inner.lock() else {
            return QualityView::default();
        };
        let mut totals = QualityTotals::default();
        let mut auc: Option<AucBins> = None;
        for slot in &rolling.slots {
            match slot.number {
                Some(n) if (oldest..=current).contains(&n) => {
                    totals.merge(&slot.totals);
                    if let Some(bins) = &slot.auc {
                        auc.get_or_insert_with(AucBins::new).merge(bins);
                    }
                }
                _ => {}
            }
        }
        QualityView::new(&totals, auc.and_then(|a| a.auc()))
    }
}

/// A version's quality windows, one per traffic variant that answers clients.
pub struct VersionQuality {
    pub model: String,
    pub version: u64,
    primary: QualityWindow,
    canary: QualityWindow,
    direct: QualityWindow,
}

impl VersionQuality {
    pub fn new(model: &str, version: u64) -> VersionQuality {
        VersionQuality {
            model: model.to_string(),
            version,
            primary: QualityWindow::default(),
            canary: QualityWindow::default(),
            direct: QualityWindow::default(),
        }
    }

    /// The window of `variant`; shadow answers reach no client, so they have no outcomes and
    /// share the direct window (nothing is ever recorded there for them).
    pub fn get(&self, variant: Variant) -> &QualityWindow {
        match variant {
            Variant::Primary => &self.primary,
            Variant::Canary => &self.canary,
            Variant::Direct | Variant::Shadow => &self.direct,
        }
    }

    /// Scores an outcome against a row's prediction and records it in `variant`'s window.
    pub fn join(
        &self,
        variant: Variant,
        prediction: RowPrediction<'_>,
        truth: Truth,
    ) -> Result<Scored, Mismatch> {
        let scored = score(prediction, truth)?;
        let positive = match (truth, prediction) {
            (
                Truth::Label(y),
                RowPrediction::Class {
                    probabilities: Some(p),
                    ..
                },
            ) if p.len() == 2 => Some((p[1], y == 1)),
            _ => None,
        };
        self.get(variant).record(truth, &scored, positive);
        Ok(scored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier_answer(labels: Vec<i64>, probabilities: Vec<f32>) -> Vec<Tensor> {
        let rows = labels.len();
        vec![
            Tensor::new("label", vec![rows], TensorData::I64(labels)).unwrap(),
            Tensor::new(
                "probabilities",
                vec![rows, probabilities.len() / rows],
                TensorData::F32(probabilities),
            )
            .unwrap(),
        ]
    }

    #[test]
    fn reads_labels_probabilities_and_values() {
        let p =
            Predicted::from_outputs(&classifier_answer(vec![1, 0], vec![0.3, 0.7, 0.9, 0.1]), 2);
        assert_eq!(
            p.row(1),
            Some(RowPrediction::Class {
                label: 0,
                probabilities: Some(&[0.9, 0.1][..])
            })
        );
        assert_eq!(p.row(2), None);
        // Logits are not probabilities: the label (arg max) is kept, the scores are not.
        let logits =
            vec![Tensor::new("y", vec![1, 3], TensorData::F32(vec![2.0, -1.0, 5.0])).unwrap()];
        let p = Predicted::from_outputs(&logits, 1);
        assert_eq!(
            p.row(0),
            Some(RowPrediction::Class {
                label: 2,
                probabilities: None
            })
        );
        let regression =
            vec![Tensor::new("y", vec![2, 1], TensorData::F64(vec![1.5, -2.0])).unwrap()];
        let p = Predicted::from_outputs(&regression, 2);
        assert_eq!(p.row(1), Some(RowPrediction::Value(-2.0)));
        // Label beside p(class 1).
        let binary = vec![
            Tensor::new("label", vec![1], TensorData::I64(vec![1])).unwrap(),
            Tensor::new("p", vec![1], TensorData::F32(vec![0.75])).unwrap(),
        ];
        let p = Predicted::from_outputs(&binary, 1);
        assert_eq!(
            p.row(0),
            Some(RowPrediction::Class {
                label: 1,
                probabilities: Some(&[0.25, 0.75][..])
            })
        );
    }

    #[test]
    fn scores_each_kind() {
        let class = RowPrediction::Class {
            label: 1,
            probabilities: Some(&[0.2, 0.8]),
        };
        let s = score(class, Truth::Label(1)).unwrap();
        assert_eq!(s.correct, Some(true));
        assert!((s.log_loss.unwrap() - -(0.8f32 as f64).ln()).abs() < 1e-12);
        assert!((s.brier.unwrap() - (0.8f32 as f64 - 1.0).powi(2)).abs() < 1e-12);
        let s = score(class, Truth::Label(0)).unwrap();
        assert_eq!(s.correct, Some(false));
        let three = RowPrediction::Class {
            label: 0,
            probabilities: Some(&[0.5, 0.25, 0.25]),
        };
        let s = score(three, Truth::Label(2)).unwrap();
        assert!((s.brier.unwrap() - (0.25 + 0.0625 + 0.5625)).abs() < 1e-9);
        // An unknown class has probability 0: the floor keeps log loss finite.
        let s = score(three, Truth::Label(7)).unwrap();
        assert!((s.log_loss.unwrap() - 1e-15f64.ln().abs()).abs() < 1e-9);
        assert_eq!(
            score(RowPrediction::Value(2.0), Truth::Value(1.5))
                .unwrap()
                .error,
            Some(0.5)
        );
        assert_eq!(
            score(RowPrediction::Value(2.0), Truth::Label(1)),
            Err(Mismatch::Kind)
        );
        assert_eq!(score(class, Truth::Value(1.0)), Err(Mismatch::Kind));
        assert!(score(RowPrediction::Opaque, Truth::Reward(1.0)).is_ok());
    }

    #[test]
    fn binned_auc_is_close_to_the_exact_one() {
        // A deterministic spread of scores with label noise, bunched near 0 and 1 as confident
        // classifiers' are.
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        let mut bins = AucBins::new();
        for _ in 0..5000 {
            let z = (next() - 0.5) * 16.0;
            let p = 1.0 / (1.0 + (-z).exp());
            let positive = next() < p;
            scores.push(f64::from(p as f32));
            labels.push(positive);
            bins.add(p as f32, positive);
        }
        let exact = exact_auc(&scores, &labels).unwrap();
        let binned = bins.auc().unwrap();
        assert!((exact - binned).abs() < 0.002, "{exact} vs {binned}");
        assert_eq!(
            exact_auc(&[0.1, 0.2, 0.2, 0.9], &[false, true, false, true]),
            Some(0.875)
        );
    }

    #[test]
    fn windows_sum_slots_over_a_span_and_keep_totals() {
        let w = QualityWindow::default();
        let t0 = w.started;
        let class = |label| RowPrediction::Class {
            label,
            probabilities: Some(&[0.4, 0.6]),
        };
        for i in 0..10 {
            let truth = Truth::Label(i % 2);
            let scored = score(class(1), truth).unwrap();
            w.record_at(
                t0 + Duration::from_secs(i as u64 * 10),
                truth,
                &scored,
                Some((0.6, i % 2 == 1)),
            );
        }
        let now = t0 + Duration::from_secs(95);
        let all = w.view_at(now, Duration::from_secs(300));
        assert_eq!((all.labeled, all.correct, all.accuracy), (10, 5, Some(0.5)));
        assert_eq!(all.roc_auc, Some(0.5));
        let recent = w.view_at(now, Duration::from_secs(20));
        assert_eq!(recent.labeled, 2, "slots 8 and 9");
        let mark = w.totals();
        w.record_at(now, Truth::Reward(2.0), &Scored::default(), None);
        let since = w.totals().since(&mark);
        assert_eq!(
            (since.outcomes, since.rewards, since.reward_mean()),
            (1, 1, Some(2.0))
        );
    }
}
