//! Methods and sweeps: a [`SweepSpec`] (one method and lists of parameter values, from
//! the command line or one `[[eval.run]]` of a config) expands to the cartesian product
//! of [`Setting`]s, each a method with checked parameters.
//!
//! Order of expansion: `p`, `clip`, `temperature`, `p_a`, `p_w` (the last varies fastest).
//! A parameter left out takes the method's default (the papers' CIFAR settings, see
//! [`MethodName::defaults`]).

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use super::EvalError;
use super::params::{Clip, LinePercentile, Sparsity, Temperature};

/// The methods of the evaluate stage, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodName {
    /// `msp`: maximum softmax probability.
    Msp,
    /// `maxlogit`: maximum logit.
    MaxLogit,
    /// `energy`: `T * logsumexp(z / T)`.
    Energy,
    /// `temp-msp`: `max softmax(z / T)`.
    TempMsp,
    /// `react`: energy of the head on `min(h, c)`.
    React,
    /// `dice`: energy of the DICE-sparsified head.
    Dice,
    /// `dice-react`: DICE's head on ReAct's clipped features.
    DiceReact,
    /// `line`: LINe (clip, activation and weight masks per predicted class).
    Line,
    /// `himplos`: HIMPLoS (head mask, clip, prototype cosine smoothing).
    Himplos,
}

impl MethodName {
    /// Every method, in the order they are listed.
    pub const ALL: [MethodName; 9] = [
        MethodName::Msp,
        MethodName::MaxLogit,
        MethodName::Energy,
        MethodName::TempMsp,
        MethodName::React,
        MethodName::Dice,
        MethodName::DiceReact,
        MethodName::Line,
        MethodName::Himplos,
    ];

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodName::Msp => "msp",
            MethodName::MaxLogit => "maxlogit",
            MethodName::Energy => "energy",
            MethodName::TempMsp => "temp-msp",
            MethodName::React => "react",
            MethodName::Dice => "dice",
            MethodName::DiceReact => "dice-react",
            MethodName::Line => "line",
            MethodName::Himplos => "himplos",
        }
    }

    /// Whether the method takes the parameter `param`.
    pub fn takes(self, param: Param) -> bool {
        use MethodName::*;
        use Param::*;
        matches!(
            (self, param),
            (Energy | TempMsp | Himplos, Temperature)
                | (React | DiceReact | Line | Himplos, Clip)
                | (Dice | DiceReact | Himplos, P)
                | (Line, PA | PW)
        )
    }

    /// The values a parameter takes when a sweep leaves it out: DICE p = 90, ReAct at
    /// the 90th percentile of ID-train activations, LINe clip 1.0 / p_a 90 / p_w 90
    /// (CIFAR-10), HIMPLoS p = 60 / clip 1.6 / T = 1 (CIFAR), energy T = 1,
    /// temperature-scaled MSP T = 1000 (ODIN's temperature).
    pub fn defaults(self) -> SweepValues {
        use MethodName::*;
        let clip = match self {
            React | DiceReact => vec![Clip::Percentile(90.0)],
            Line => vec![Clip::Value(1.0)],
            Himplos => vec![Clip::Value(1.6)],
            _ => vec![],
        };
        let p = match self {
            Dice | DiceReact => vec![90.0],
            Himplos => vec![60.0],
            _ => vec![],
        };
        let temperature = match self {
            Energy | Himplos => vec![1.0],
            TempMsp => vec![1000.0],
            _ => vec![],
        };
        let line = |v: f64| if self == Line { vec![v] } else { vec![] };
        SweepValues {
            p: p.into_iter().map(checked(Sparsity::new)).collect(),
            clip,
            temperature: temperature
                .into_iter()
                .map(checked(Temperature::new))
                .collect(),
            p_a: line(90.0)
                .into_iter()
                .map(checked(LinePercentile::activation))
                .collect(),
            p_w: line(90.0)
                .into_iter()
                .map(checked(LinePercentile::weight))
                .collect(),
        }
    }
}

fn checked<T>(f: fn(f64) -> Result<T, EvalError>) -> impl Fn(f64) -> T {
    move |v| f(v).expect("default parameter values are in range")
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MethodName {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase().replace('_', "-");
        MethodName::ALL
            .into_iter()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| EvalError::UnknownMethod {
                name: s.to_owned(),
                known: MethodName::ALL.map(|m| m.as_str()).join(", "),
            })
    }
}

/// A sweepable parameter, named by its flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `--p`: sparsity.
    P,
    /// `--clip`: activation clip.
    Clip,
    /// `--temperature`.
    Temperature,
    /// `--p-a`: LINe activation-mask percentile.
    PA,
    /// `--p-w`: LINe weight-mask percentile.
    PW,
}

impl Param {
    /// The command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            Param::P => Sparsity::FLAG,
            Param::Clip => Clip::FLAG,
            Param::Temperature => Temperature::FLAG,
            Param::PA => LinePercentile::ACTIVATION_FLAG,
            Param::PW => LinePercentile::WEIGHT_FLAG,
        }
    }
}

/// Lists of checked parameter values (an empty list = not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepValues {
    /// Sparsities.
    pub p: Vec<Sparsity>,
    /// Clip thresholds (values or ID-train percentiles).
    pub clip: Vec<Clip>,
    /// Temperatures.
    pub temperature: Vec<Temperature>,
    /// LINe activation-mask percentiles.
    pub p_a: Vec<LinePercentile>,
    /// LINe weight-mask percentiles.
    pub p_w: Vec<LinePercentile>,
}

impl SweepValues {
    /// Parses comma lists as the command line gives them (`--p 0,50,90 --clip 1.0,p90`);
    /// `None` = flag not given.
    pub fn parse(
        p: Option<&str>,
        clip: Option<&str>,
        temperature: Option<&str>,
        p_a: Option<&str>,
        p_w: Option<&str>,
    ) -> Result<Self, EvalError> {
        fn list<T>(
            text: Option<&str>,
            parse: impl Fn(&str) -> Result<T, EvalError>,
        ) -> Result<Vec<T>, EvalError> {
            text.map_or(Ok(Vec::new()), |t| t.split(',').map(&parse).collect())
        }
        let number = |flag: &'static str, s: &str| {
            s.trim().parse::<f64>().map_err(|_| EvalError::Param {
                flag,
                value: s.to_owned(),
                reason: "not a number",
            })
        };
        Ok(Self {
            p: list(p, str::parse)?,
            clip: list(clip, str::parse)?,
            temperature: list(temperature, str::parse)?,
            p_a: list(p_a, |s| {
                LinePercentile::activation(number(LinePercentile::ACTIVATION_FLAG, s)?)
            })?,
            p_w: list(p_w, |s| {
                LinePercentile::weight(number(LinePercentile::WEIGHT_FLAG, s)?)
            })?,
        })
    }

    /// Which parameters have values.
    fn given(&self) -> Vec<Param> {
        let mut out = Vec::new();
        for (param, n) in [
            (Param::P, self.p.len()),
            (Param::Clip, self.clip.len()),
            (Param::Temperature, self.temperature.len()),
            (Param::PA, self.p_a.len()),
            (Param::PW, self.p_w.len()),
        ] {
            if n > 0 {
                out.push(param);
            }
        }
        out
    }
}

/// One sweep: methods and parameter lists; each method takes the lists of the
/// parameters it has and its defaults for the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    /// Methods to run.
    pub methods: Vec<MethodName>,
    /// Parameter values.
    pub values: SweepValues,
}

impl SweepSpec {
    /// Checks that every given parameter applies to at least one of the methods (a
    /// `--p` for `msp` alone is a mistake worth saying), then expands the sweep.
    pub fn settings(&self) -> Result<Vec<Setting>, EvalError> {
        for param in self.values.given() {
            if !self.methods.iter().any(|m| m.takes(param)) {
                let names = |ms: &mut dyn Iterator<Item = MethodName>| {
                    ms.map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
                };
                return Err(EvalError::NotApplicable {
                    flag: param.flag(),
                    methods: names(&mut self.methods.iter().copied()),
                    applies_to: names(&mut MethodName::ALL.into_iter().filter(|m| m.takes(param))),
                });
            }
        }
        Ok(self
            .methods
            .iter()
            .flat_map(|&m| expand(m, &self.values))
            .collect())
    }
}

/// The cartesian product for one method.
fn expand(method: MethodName, given: &SweepValues) -> Vec<Setting> {
    let defaults = method.defaults();
    fn pick<T: Clone>(given: &[T], default: &[T], takes: bool) -> Vec<Option<T>> {
        if !takes {
            vec![None]
        } else if given.is_empty() {
            default.iter().cloned().map(Some).collect()
        } else {
            given.iter().cloned().map(Some).collect()
        }
    }
    let ps = pick(&given.p, &defaults.p, method.takes(Param::P));
    let clips = pick(&given.clip, &defaults.clip, method.takes(Param::Clip));
    let ts = pick(
        &given.temperature,
        &defaults.temperature,
        method.takes(Param::Temperature),
    );
    let pas = pick(&given.p_a, &defaults.p_a, method.takes(Param::PA));
    let pws = pick(&given.p_w, &defaults.p_w, method.takes(Param::PW));
    let mut out = Vec::new();
    for &p in &ps {
        for &clip in &clips {
            for &t in &ts {
                for &p_a in &pas {
                    for &p_w in &pws {
                        out.push(Setting::build(method, p, clip, t, p_a, p_w));
                    }
                }
            }
        }
    }
    out
}

/// One configuration: a method with all its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// Maximum softmax probability.
    Msp,
    /// Maximum logit.
    MaxLogit,
    /// Energy at temperature `T`.
    Energy(Temperature),
    /// Temperature-scaled MSP.
    TempMsp(Temperature),
    /// ReAct with clip `c`.
    React(Clip),
    /// DICE with sparsity `p`.
    Dice(Sparsity),
    /// DICE on ReAct-clipped features.
    DiceReact(Sparsity, Clip),
    /// LINe.
    Line {
        /// Activation clip.
        clip: Clip,
        /// Activation-mask percentile.
        p_a: LinePercentile,
        /// Weight-mask percentile.
        p_w: LinePercentile,
    },
    /// HIMPLoS.
    Himplos {
        /// Head-mask sparsity.
        p: Sparsity,
        /// Clip after masking.
        clip: Clip,
        /// Temperature of the final logsumexp.
        t: Temperature,
    },
}

impl Setting {
    fn build(
        method: MethodName,
        p: Option<Sparsity>,
        clip: Option<Clip>,
        t: Option<Temperature>,
        p_a: Option<LinePercentile>,
        p_w: Option<LinePercentile>,
    ) -> Setting {
        const MSG: &str = "expand() supplies every parameter the method takes";
        match method {
            MethodName::Msp => Setting::Msp,
            MethodName::MaxLogit => Setting::MaxLogit,
            MethodName::Energy => Setting::Energy(t.expect(MSG)),
            MethodName::TempMsp => Setting::TempMsp(t.expect(MSG)),
            MethodName::React => Setting::React(clip.expect(MSG)),
            MethodName::Dice => Setting::Dice(p.expect(MSG)),
            MethodName::DiceReact => Setting::DiceReact(p.expect(MSG), clip.expect(MSG)),
            MethodName::Line => Setting::Line {
                clip: clip.expect(MSG),
                p_a: p_a.expect(MSG),
                p_w: p_w.expect(MSG),
            },
            MethodName::Himplos => Setting::Himplos {
                p: p.expect(MSG),
                clip: clip.expect(MSG),
                t: t.expect(MSG),
            },
        }
    }

    /// The method of this setting.
    pub fn method(&self) -> MethodName {
        match self {
            Setting::Msp => MethodName::Msp,
            Setting::MaxLogit => MethodName::MaxLogit,
            Setting::Energy(_) => MethodName::Energy,
            Setting::TempMsp(_) => MethodName::TempMsp,
            Setting::React(_) => MethodName::React,
            Setting::Dice(_) => MethodName::Dice,
            Setting::DiceReact(..) => MethodName::DiceReact,
            Setting::Line { .. } => MethodName::Line,
            Setting::Himplos { .. } => MethodName::Himplos,
        }
    }

    /// The clip of this setting, if it has one.
    pub fn clip(&self) -> Option<Clip> {
        match *self {
            Setting::React(c) | Setting::DiceReact(_, c) => Some(c),
            Setting::Line { clip, .. } | Setting::Himplos { clip, .. } => Some(clip),
            _ => None,
        }
    }

    /// The parameters as the JSON report writes them (`p`, `clip`, `clip_percentile`,
    /// `temperature`, `p_a`, `p_w`); a percentile clip is written as its resolved value
    /// `clip` with `clip_percentile` beside it.
    pub fn params_json(&self, resolved_clip: Option<f64>) -> Map<String, Value> {
        let mut m = Map::new();
        let put_clip = |m: &mut Map<String, Value>, c: Clip| match c {
            Clip::Value(v) => {
                m.insert("clip".into(), json!(v));
            }
            Clip::Percentile(q) => {
                m.insert("clip".into(), json!(resolved_clip));
                m.insert("clip_percentile".into(), json!(q));
            }
        };
        match *self {
            Setting::Msp | Setting::MaxLogit => {}
            Setting::Energy(t) | Setting::TempMsp(t) => {
                m.insert("temperature".into(), json!(t.get()));
            }
            Setting::React(c) => put_clip(&mut m, c),
            Setting::Dice(p) => {
                m.insert("p".into(), json!(p.percent()));
            }
            Setting::DiceReact(p, c) => {
                m.insert("p".into(), json!(p.percent()));
                put_clip(&mut m, c);
            }
            Setting::Line { clip, p_a, p_w } => {
                put_clip(&mut m, clip);
                m.insert("p_a".into(), json!(p_a.percent()));
                m.insert("p_w".into(), json!(p_w.percent()));
            }
            Setting::Himplos { p, clip, t } => {
                m.insert("p".into(), json!(p.percent()));
                put_clip(&mut m, clip);
                m.insert("temperature".into(), json!(t.get()));
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(methods: &str, p: Option<&str>, clip: Option<&str>, t: Option<&str>) -> SweepSpec {
        SweepSpec {
            methods: methods.split(',').map(|m| m.parse().unwrap()).collect(),
            values: SweepValues::parse(p, clip, t, None, None).unwrap(),
        }
    }

    #[test]
    fn cartesian_product_in_flag_order() {
        let s = spec("dice-react", Some("50,90"), Some("1.0,p90"), None)
            .settings()
            .unwrap();
        let p = |v| Sparsity::new(v).unwrap();
        assert_eq!(
            s,
            vec![
                Setting::DiceReact(p(50.0), Clip::Value(1.0)),
                Setting::DiceReact(p(50.0), Clip::Percentile(90.0)),
                Setting::DiceReact(p(90.0), Clip::Value(1.0)),
                Setting::DiceReact(p(90.0), Clip::Percentile(90.0)),
            ]
        );
    }

    #[test]
    fn flags_apply_to_the_methods_that_take_them_and_defaults_fill_the_rest() {
        let s = spec("msp,dice,himplos", Some("70"), None, None)
            .settings()
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], Setting::Msp);
        assert_eq!(s[1], Setting::Dice(Sparsity::new(70.0).unwrap()));
        assert_eq!(
            s[2],
            Setting::Himplos {
                p: Sparsity::new(70.0).unwrap(),
                clip: Clip::Value(1.6),
                t: Temperature::ONE
            }
        );
        let line = spec("line", None, None, None).settings().unwrap();
        assert_eq!(line[0].params_json(Some(1.0))["p_a"], 90.0);
    }

    #[test]
    fn a_flag_no_selected_method_takes_is_an_error() {
        let e = spec("msp,energy", Some("90"), None, None)
            .settings()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--p does not apply to msp, energy (it applies to dice, dice-react, himplos)"
        );
    }

    #[test]
    fn unknown_methods_and_bad_values_name_themselves() {
        let e = "odin".parse::<MethodName>().unwrap_err().to_string();
        assert!(
            e.contains("unknown method \"odin\"") && e.contains("dice-react"),
            "{e}"
        );
        assert_eq!(
            "DICE_REACT".parse::<MethodName>().unwrap(),
            MethodName::DiceReact
        );
        let e = SweepValues::parse(Some("50,100"), None, None, None, None).unwrap_err();
        assert_eq!(e.to_string(), "--p 100: sparsity must be in [0, 100)");
        let e = SweepValues::parse(None, Some("-1"), None, None, None).unwrap_err();
        assert!(e.to_string().starts_with("--clip -1"), "{e}");
        let e = SweepValues::parse(None, None, Some("0"), None, None).unwrap_err();
        assert!(e.to_string().starts_with("--temperature 0"), "{e}");
        let e = SweepValues::parse(None, None, None, Some("abc"), None).unwrap_err();
        assert_eq!(e.to_string(), "--p-a abc: not a number");
    }

    #[test]
    fn percentile_clips_report_value_and_percentile() {
        let s = Setting::React(Clip::Percentile(90.0));
        let j = s.params_json(Some(0.5));
        assert_eq!(j["clip"], 0.5);
        assert_eq!(j["clip_percentile"], 90.0);
        let j = Setting::React(Clip::Value(1.0)).params_json(None);
        assert!(!j.contains_key("clip_percentile"));
    }
}
