//! Pictures of an evaluate run, written as SVG and PNG with `plotters`: the ID-vs-OOD
//! score histogram and the ROC curve of one configuration and OOD set, and the
//! metric-vs-parameter curve of a sweep.
//!
//! PNG text needs a TrueType font: the first of [`FONT_CANDIDATES`] that exists (or the
//! file named by `POSTHOC_FONT`) is loaded once; without one, plots are refused with an
//! error that says so (SVG would still need a font to measure text).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::ops::Range;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Fonts tried, in order, for text in plots (Debian's `fonts-dejavu-core` first).
pub const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (800, 560);
const ID_COLOR: RGBColor = RGBColor(31, 119, 180);
const OOD_COLOR: RGBColor = RGBColor(214, 39, 40);
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Errors writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable TrueType font was found.
    #[error(
        "no TrueType font for plot text: install fonts-dejavu-core or set POSTHOC_FONT to a .ttf file (tried {tried:?})"
    )]
    NoFont {
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// plotters failed drawing or encoding a file.
    #[error("cannot write plot {path}: {message}")]
    Draw {
        /// Output file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
    /// Nothing to plot.
    #[error("cannot plot {what}: {why}")]
    Empty {
        /// The plot.
        what: String,
        /// Why it cannot be drawn.
        why: &'static str,
    },
}

/// Loads and registers the plot font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static FONT_LOADED: OnceLock<Result<(), Vec<PathBuf>>> = OnceLock::new();
    FONT_LOADED
        .get_or_init(|| {
            let mut tried: Vec<PathBuf> = Vec::new();
            if let Some(p) = std::env::var_os("POSTHOC_FONT") {
                tried.push(PathBuf::from(p));
            }
            tried.extend(FONT_CANDIDATES.iter().map(PathBuf::from));
            for path in &tried {
                if let Ok(bytes) = std::fs::read(path) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                        return Ok(());
                    }
                }
            }
            Err(tried)
        })
        .clone()
        .map_err(|tried| PlotError::NoFont { tried })
}

/// Something that draws itself onto any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Renders `fig` to `<stem>.svg` and `<stem>.png`; returns both paths.
fn save(fig: &impl Figure, stem: &Path) -> Result<[PathBuf; 2], PlotError> {
    ensure_font()?;
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir).map_err(|e| PlotError::Draw {
            path: dir.to_owned(),
            message: e.to_string(),
        })?;
    }
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    let err = |path: &Path, e: &dyn std::fmt::Display| PlotError::Draw {
        path: path.to_owned(),
        message: e.to_string(),
    };
    {
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        fig.draw(&area).map_err(|e| err(&svg, &e))?;
        area.present().map_err(|e| err(&svg, &e))?;
    }
    {
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        fig.draw(&area).map_err(|e| err(&png, &e))?;
        area.present().map_err(|e| err(&png, &e))?;
    }
    Ok([svg, png])
}

/// A chart with both axes in `f64`.
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart on `area` in the common style: caption, margins, axis descriptions, light grid
/// (`y_label_width` pixels for the y tick labels).
fn styled_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
    y_label_width: u32,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_width)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;
    Ok(chart)
}

/// The legend of `chart` in the common style, at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

/// `(min, max)` of `values` (`(inf, -inf)` when empty).
fn extent(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        })
}

/// Overlaid ID and OOD score histograms (densities, shared bins).
struct Histogram<'a> {
    title: &'a str,
    id: &'a [f64],
    ood: &'a [f64],
    ood_name: &'a str,
    bins: usize,
}

impl Histogram<'_> {
    fn densities(&self, lo: f64, width: f64, values: &[f64]) -> Vec<f64> {
        let mut counts = vec![0usize; self.bins];
        for &v in values {
            let b = (((v - lo) / width) as usize).min(self.bins - 1);
            counts[b] += 1;
        }
        let scale = 1.0 / (values.len() as f64 * width);
        counts.into_iter().map(|c| c as f64 * scale).collect()
    }
}

impl Figure for Histogram<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        area.fill(&WHITE)?;
        let (lo, hi) = extent(self.id.iter().chain(self.ood).copied());
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let width = (hi - lo) / self.bins as f64;
        let id_d = self.densities(lo, width, self.id);
        let ood_d = self.densities(lo, width, self.ood);
        let top = id_d.iter().chain(&ood_d).copied().fold(0.0, f64::max) * 1.05;
        let mut chart = styled_chart(
            area,
            self.title,
            (lo..hi, 0.0..top.max(f64::MIN_POSITIVE)),
            ("score (higher = more in-distribution)", "density"),
            60,
        )?;
        for (dens, color, name) in [
            (&id_d, ID_COLOR, "ID test".to_owned()),
            (&ood_d, OOD_COLOR, format!("OOD: {}", self.ood_name)),
        ] {
            chart
                .draw_series(dens.iter().enumerate().map(|(i, &d)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, d)], color.mix(0.4).filled())
                }))?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// A ROC curve with the chance diagonal and the TPR = 95% line.
struct Roc<'a> {
    title: &'a str,
    points: &'a [(f64, f64)],
    auroc: f64,
}

impl Figure for Roc<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        area.fill(&WHITE)?;
        let mut chart = styled_chart(
            area,
            self.title,
            (0.0..1.0, 0.0..1.0),
            (
                "false positive rate (OOD accepted)",
                "true positive rate (ID accepted)",
            ),
            50,
        )?;
        chart.draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.3).stroke_width(1),
        ))?;
        chart.draw_series(LineSeries::new(
            [(0.0, 0.95), (1.0, 0.95)],
            OOD_COLOR.mix(0.5).stroke_width(1),
        ))?;
        chart
            .draw_series(LineSeries::new(
                self.points.iter().copied(),
                ID_COLOR.stroke_width(2),
            ))?
            .label(format!("ROC (AUROC {:.2}%)", 100.0 * self.auroc))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ID_COLOR.stroke_width(2)));
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)
    }
}

/// Metric curves (in percent) against a swept parameter.
struct Sweep<'a> {
    title: &'a str,
    x_label: &'a str,
    xs: &'a [f64],
    series: &'a [(String, Vec<f64>)],
}

impl Figure for Sweep<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        area.fill(&WHITE)?;
        let (x0, x1) = extent(self.xs.iter().copied());
        let pad = if x1 > x0 { 0.03 * (x1 - x0) } else { 1.0 };
        let mut chart = styled_chart(
            area,
            self.title,
            (x0 - pad..x1 + pad, 0.0..100.0),
            (self.x_label, "percent (average over OOD sets)"),
            50,
        )?;
        for (i, (name, ys)) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts: Vec<(f64, f64)> = self.xs.iter().copied().zip(ys.iter().copied()).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}

/// Writes the ID-vs-OOD score histogram to `<stem>.svg` and `<stem>.png`.
pub fn score_histogram(
    stem: &Path,
    title: &str,
    ood_name: &str,
    id: &[f64],
    ood: &[f64],
) -> Result<[PathBuf; 2], PlotError> {
    if id.is_empty() || ood.is_empty() {
        return Err(PlotError::Empty {
            what: title.to_owned(),
            why: "no ID or no OOD scores",
        });
    }
    save(
        &Histogram {
            title,
            id,
            ood,
            ood_name,
            bins: 60,
        },
        stem,
    )
}

/// Writes the ROC curve through `points` = (FPR, TPR) to `<stem>.svg` and `<stem>.png`.
pub fn roc_curve(
    stem: &Path,
    title: &str,
    points: &[(f64, f64)],
    auroc: f64,
) -> Result<[PathBuf; 2], PlotError> {
    if points.len() < 2 {
        return Err(PlotError::Empty {
            what: title.to_owned(),
            why: "fewer than two ROC points",
        });
    }
    save(
        &Roc {
            title,
            points,
            auroc,
        },
        stem,
    )
}

/// Writes metric curves (`series`: name and one value in percent per `xs`) against a
/// swept parameter to `<stem>.svg` and `<stem>.png`.
pub fn sweep_curve(
    stem: &Path,
    title: &str,
    x_label: &str,
    xs: &[f64],
    series: &[(String, Vec<f64>)],
) -> Result<[PathBuf; 2], PlotError> {
    if xs.len() < 2 || series.iter().any(|(_, ys)| ys.len() != xs.len()) {
        return Err(PlotError::Empty {
            what: title.to_owned(),
            why: "a sweep curve needs two or more points and one value per point",
        });
    }
    save(
        &Sweep {
            title,
            x_label,
            xs,
            series,
        },
        stem,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn font_available() -> bool {
        if ensure_font().is_ok() {
            return true;
        }
        eprintln!("skipping: no TrueType font installed (fonts-dejavu-core)");
        false
    }

    /// Set `POSTHOC_KEEP_PLOTS=DIR` to keep the pictures for a look.
    #[test]
    fn writes_svg_and_png_for_each_kind() {
        if !font_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let dir = match std::env::var_os("POSTHOC_KEEP_PLOTS") {
            Some(keep) => tempfile::TempDir::new_in(keep).unwrap().keep(),
            None => dir.path().to_owned(),
        };
        let dir = dir.as_path();
        let id: Vec<f64> = (0..500).map(|i| 5.0 + (i as f64 * 0.37).sin()).collect();
        let ood: Vec<f64> = (0..300).map(|i| 3.5 + (i as f64 * 0.11).cos()).collect();
        let files = score_histogram(&dir.join("h"), "energy", "isun", &id, &ood).unwrap();
        let roc = [(0.0, 0.0), (0.1, 0.7), (0.4, 0.95), (1.0, 1.0)];
        let files2 = roc_curve(&dir.join("r"), "energy", &roc, 0.9).unwrap();
        let series = vec![("FPR95".to_owned(), vec![40.0, 30.0, 25.0])];
        let files3 =
            sweep_curve(&dir.join("s"), "dice", "p", &[50.0, 70.0, 90.0], &series).unwrap();
        for f in files.iter().chain(&files2).chain(&files3) {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                bytes.len() > 1000,
                "{} is only {} bytes",
                f.display(),
                bytes.len()
            );
        }
        let png = std::fs::read(&files[1]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("<svg") && svg.contains("isun"));
    }

    #[test]
    fn empty_input_is_an_error_not_a_blank_picture() {
        let dir = tempfile::tempdir().unwrap();
        let err = score_histogram(&dir.path().join("h"), "msp", "mnist", &[], &[1.0]).unwrap_err();
        assert!(err.to_string().contains("no ID or no OOD"));
        let err = sweep_curve(&dir.path().join("s"), "dice", "p", &[1.0], &[]).unwrap_err();
        assert!(err.to_string().contains("two or more"));
    }
}
