//! `report.html`: the evaluation as a page a browser opens without anything else: the metrics
//! tables and four SVG plots drawn with `plotters` (operating curve with the baselines as points,
//! precision-recall curve, calibration, feature importance by gain), inlined in the page.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::evaluate::{Evaluation, Outcome};

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// A plot of the report could not be drawn (plotters' own errors are not `Send`: their message
/// is kept).
#[derive(Debug, thiserror::Error)]
#[error("drawing the report's plot: {0}")]
pub struct ReportError(String);

const SIZE: (u32, u32) = (620, 420);

/// Draws one plot into an SVG document.
fn svg(size: (u32, u32), draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Drawn) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| ReportError(e.to_string()))?;
        draw(&root).map_err(|e| ReportError(e.to_string()))?;
        root.present().map_err(|e| ReportError(e.to_string()))?;
    }
    Ok(out)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>;

/// The frame the curve plots share: caption, `x` by `y`, the mesh with both axis names.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: String,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &str,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(root).caption(caption, ("sans-serif", 18)).margin(12).x_label_area_size(40).y_label_area_size(56).build_cartesian_2d(x, y)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    Ok(chart)
}

/// A legend key: a short line in `color`.
fn line_key(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color)
}

fn operating_curve(evaluation: &Evaluation) -> Result<String, ReportError> {
    svg(SIZE, |root| {
        let point = |o: &Outcome| (o.false_deny_rate, o.oversell_rate);
        // the region where the policies differ: up to three times the largest of their false-deny rates
        let x_max = [&evaluation.naive_atp, &evaluation.static_safety_stock, &evaluation.model].iter().map(|o| o.false_deny_rate).fold(0.0, f64::max);
        let x_max = (x_max * 3.0).clamp(0.02, 1.0);
        let shown = |p: &(f64, f64)| p.0 <= x_max;
        let model: Vec<(f64, f64)> = evaluation.curve.iter().skip(1).map(|p| (p.false_deny_rate, p.oversell_rate)).filter(shown).collect();
        let stocks: Vec<(f64, f64)> =
            evaluation.safety_stocks.iter().filter(|(_, o)| o.promised > 0).map(|(_, o)| point(o)).filter(shown).collect();
        let y_max = model.iter().chain(&stocks).map(|p| p.1).chain([point(&evaluation.naive_atp).1]).fold(0.01, f64::max) * 1.1;
        let (x_desc, y_desc) = ("false-deny rate (denied among shipped orders)", "oversell rate (shorted among promised)");
        let mut chart = frame(root, "Operating curve, held-out days".into(), 0.0..x_max, 0.0..y_max, x_desc, y_desc)?;
        chart.draw_series(LineSeries::new(model, BLUE.stroke_width(2)))?.label("model").legend(line_key(BLUE));
        chart
            .draw_series(LineSeries::new(stocks, GREEN.mix(0.6)))?
            .label("static safety stock k = 0, 1, 2, …")
            .legend(line_key(GREEN));
        let dots = [
            (point(&evaluation.naive_atp), RED, "naive ATP".to_string()),
            (point(&evaluation.static_safety_stock), GREEN, format!("best safety stock (k = {})", evaluation.safety_stock)),
            (point(&evaluation.model), BLUE, format!("model at threshold {:.3}", evaluation.threshold)),
        ];
        for (at, color, label) in dots {
            chart.draw_series(std::iter::once(Circle::new(at, 6, color.filled())))?.label(label).legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
        Ok(())
    })
}

fn precision_recall(evaluation: &Evaluation) -> Result<String, ReportError> {
    svg(SIZE, |root| {
        let caption = format!("Precision-recall for oversells (PR-AUC {:.3})", evaluation.pr_auc);
        let mut chart = frame(root, caption, 0.0..1.0, 0.0..1.0, "recall (shorted orders flagged)", "precision")?;
        chart.draw_series(LineSeries::new(evaluation.precision_recall.iter().copied(), BLUE.stroke_width(2)))?.label("model").legend(line_key(BLUE));
        let rate = evaluation.short_rate;
        chart
            .draw_series(LineSeries::new([(0.0, rate), (1.0, rate)], BLACK.mix(0.5)))?
            .label(format!("no skill (short rate {rate:.3})"))
            .legend(line_key(BLACK));
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
        Ok(())
    })
}

fn calibration(evaluation: &Evaluation) -> Result<String, ReportError> {
    svg(SIZE, |root| {
        let top = evaluation.calibration.iter().flat_map(|bin| [bin.predicted, bin.observed]).fold(0.05, f64::max).min(1.0) * 1.1;
        let caption = format!("Calibration (expected error {:.4})", evaluation.calibration_error);
        let mut chart = frame(root, caption, 0.0..top, 0.0..top, "predicted short probability (bin mean)", "observed short rate")?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.4)))?.label("perfect").legend(line_key(BLACK));
        let bins: Vec<(f64, f64)> = evaluation.calibration.iter().map(|bin| (bin.predicted, bin.observed)).collect();
        chart.draw_series(LineSeries::new(bins.clone(), BLUE.stroke_width(2)))?.label("model").legend(line_key(BLUE));
        chart.draw_series(bins.into_iter().map(|at| Circle::new(at, 4, BLUE.filled())))?;
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
        Ok(())
    })
}

fn importance(evaluation: &Evaluation) -> Result<String, ReportError> {
    let shown: Vec<&(String, f64)> = evaluation.importance.iter().take(20).collect();
    let rows = shown.len().max(1) as i32;
    svg((SIZE.0, 80 + 22 * rows as u32), |root| {
        let top = shown.iter().map(|(_, gain)| *gain).fold(1e-9, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption("Feature importance (average gain per split)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(190)
            .build_cartesian_2d(0f64..top, (0..rows).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows as usize)
            .y_label_formatter(&|value| match value {
                SegmentValue::CenterOf(row) => shown.get((rows - 1 - row) as usize).map(|(name, _)| name.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .draw()?;
        chart.draw_series(shown.iter().enumerate().map(|(rank, (_, gain))| {
            let row = rows - 1 - rank as i32;
            let mut bar = Rectangle::new([(0.0, SegmentValue::Exact(row)), (*gain, SegmentValue::Exact(row + 1))], BLUE.mix(0.7).filled());
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        Ok(())
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn row(name: &str, outcome: &Outcome) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>",
        escape(name),
        outcome.promised,
        outcome.oversells,
        outcome.oversell_rate,
        outcome.oversells_caught,
        outcome.false_denies,
        outcome.false_deny_rate
    )
}

/// What each group of features adds: the model trained without it, on the held-out days.
fn ablation(evaluation: &Evaluation) -> String {
    if evaluation.ablation.len() < 2 {
        return String::new();
    }
    let rows: String = evaluation
        .ablation
        .iter()
        .map(|row| {
            let without = if row.without.is_empty() { "nothing: the model".to_string() } else { format!("{} ({})", row.without, row.features) };
            format!(
                "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td></tr>",
                escape(&without),
                row.pr_auc,
                row.calibration_error,
                row.threshold,
                row.oversells,
                row.false_denies
            )
        })
        .collect();
    format!(
        "<h2>What each group of features adds</h2>\n<p>The same training without one group of features at a time (made missing everywhere), \
         each at its own threshold chosen on the validation days for the same target; figures on the held-out days.</p>\n\
         <table><tr><th>trained without</th><th>PR-AUC</th><th>calibration error</th><th>threshold</th><th>oversells</th><th>false denies</th></tr>\n{rows}</table>\n"
    )
}

/// Each validation and held-out day: the mean predicted short probability beside the observed
/// short rate.
fn days(evaluation: &Evaluation) -> String {
    let rows: String = evaluation
        .days
        .iter()
        .map(|day| {
            let date = chrono::DateTime::from_timestamp_millis(day.day).map_or_else(|| day.day.to_string(), |at| at.format("%Y-%m-%d").to_string());
            let set = if day.held_out { "held out" } else { "validation" };
            format!("<tr><td>{date}</td><td>{set}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td></tr>", day.orders, day.predicted, day.observed)
        })
        .collect();
    format!(
        "<h2>Day by day</h2>\n<p>The mean predicted short probability beside the observed short rate: scores that drift from what happened \
         show here first.</p>\n<table><tr><th>day</th><th>window</th><th>orders</th><th>mean predicted</th><th>observed</th></tr>\n{rows}</table>\n"
    )
}

/// The whole page. `title` and `details` (name, value) head it: version, lineage, rounds.
pub fn html(title: &str, details: &[(String, String)], evaluation: &Evaluation) -> Result<String, ReportError> {
    let e = evaluation;
    let (fd, os) = (&e.at_matched_false_denies, &e.at_matched_oversells);
    let details: String = details.iter().map(|(name, value)| format!("<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value))).collect();
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1300px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ text-align: left; background: #f4f4f4; }} .plots {{ display: flex; flex-wrap: wrap; gap: 12px; }} figure {{ margin: 0; }}
.headline {{ font-size: 1.15em; background: #eef5ff; padding: 10px; border-left: 4px solid #36c; }}
.warning {{ font-size: 1.15em; background: #fff0f0; padding: 10px; border-left: 4px solid #c33; }}
</style></head><body>
<h1>{title}</h1>
<table>{details}</table>
{warnings}<p class="headline">On the held-out days ({test} orders, {shorted} shorted), at operating points all chosen before them: the model at its
threshold oversells <b>{fd_model_oversells}</b> orders and denies {fd_model_denies} that shipped, where the static safety stock that denied
no more shipped orders than the model on the validation days (k = {fd_k}) oversells <b>{fd_stock_oversells}</b> and denies {fd_stock_denies}
(the model's oversells are {fd_ratio:.2}× its);
the safety stock that oversold no more than the model on the validation days (k = {os_k}) denies <b>{os_stock_denies}</b> shipped orders
and oversells {os_stock_oversells}.</p>
<h2>Policies on the held-out days</h2>
<p>Target oversell rate {target:.4}: the model's threshold ({threshold:.4}) was chosen on the validation days, the safety stock on the training days.</p>
<table><tr><th>policy</th><th>promised</th><th>oversells</th><th>oversell rate</th><th>oversells caught</th><th>false denies</th><th>false-deny rate</th></tr>
{model_row}{naive_row}{stock_row}</table>
<table><tr><th>PR-AUC (oversell)</th><td>{pr_auc:.4} (no skill: {short_rate:.4})</td></tr>
<tr><th>log loss</th><td>{log_loss:.4}</td></tr><tr><th>expected calibration error</th><td>{ece:.4}</td></tr>
<tr><th>orders: train / validation / test</th><td>{n_train} / {n_validation} / {test}</td></tr></table>
{days}{ablation}<div class="plots">
<figure>{curve}</figure>
<figure>{pr}</figure>
<figure>{calibration}</figure>
<figure>{importance}</figure>
</div>
</body></html>
"#,
        title = escape(title),
        warnings = e.warnings.iter().map(|warning| format!("<p class=\"warning\">Warning: {}</p>\n", escape(warning))).collect::<String>(),
        fd_model_oversells = fd.model_oversells,
        fd_model_denies = fd.model_false_denies,
        fd_k = fd.safety_stock,
        fd_stock_oversells = fd.safety_stock_oversells,
        fd_stock_denies = fd.safety_stock_false_denies,
        fd_ratio = fd.model_oversells as f64 / fd.safety_stock_oversells.max(1) as f64,
        os_k = os.safety_stock,
        os_stock_denies = os.safety_stock_false_denies,
        os_stock_oversells = os.safety_stock_oversells,
        test = e.orders.test,
        shorted = e.orders.test_shorted,
        target = e.target_oversell_rate,
        threshold = e.threshold,
        model_row = row(&format!("model, p_fulfill ≥ {:.4}", e.threshold), &e.model),
        naive_row = row("naive ATP (ATP ≥ qty)", &e.naive_atp),
        stock_row = row(&format!("static safety stock (ATP ≥ qty + {})", e.safety_stock), &e.static_safety_stock),
        pr_auc = e.pr_auc,
        short_rate = e.short_rate,
        log_loss = e.log_loss,
        ece = e.calibration_error,
        n_train = e.orders.train,
        n_validation = e.orders.validation,
        days = days(e),
        ablation = ablation(e),
        curve = operating_curve(e)?,
        pr = precision_recall(e)?,
        calibration = calibration(e)?,
        importance = importance(e)?,
    ))
}
