//! Sweeps: a [`SweepSpec`] (methods and lists of parameter values, from the command
//! line or one `[[eval.run]]` of a config) expands to the cartesian product of
//! [`Setting`]s, each a method of the registry ([`super::methods`]) with checked
//! parameters.
//!
//! Order of expansion: the order of [`Param::ALL`] (`p`, `clip`, `temperature`, `p_a`,
//! `p_w`, `gamma`, `top_m`, `k`, `dim`, `bank_fraction`, `score`, `variant`; the last
//! varies fastest). A parameter left out takes the method's paper default
//! ([`super::methods::Method::defaults`]).

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value, json};

use super::EvalError;
use super::methods::{self, Method};
use super::params::{
    BankFraction, Clip, Dim, Gamma, LinePercentile, Neighbours, ScoreKind, Sparsity, Temperature,
    TopM, Variant,
};

/// A method of the registry, by its command-line name (`dice`, `knn`, ...).
#[derive(Clone, Copy)]
pub struct MethodName(&'static dyn Method);

impl MethodName {
    /// Every registered method, in registry order.
    pub fn all() -> impl Iterator<Item = MethodName> {
        methods::REGISTRY.iter().map(|m| MethodName(*m))
    }

    /// The command-line name.
    pub fn as_str(self) -> &'static str {
        self.0.name()
    }

    /// The method itself.
    pub fn method(self) -> &'static dyn Method {
        self.0
    }

    /// Whether the method takes the parameter `param`.
    pub fn takes(self, param: Param) -> bool {
        self.0.params().contains(&param)
    }
}

impl PartialEq for MethodName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MethodName({})", self.as_str())
    }
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
        MethodName::all()
            .find(|m| m.as_str() == name)
            .ok_or_else(|| EvalError::UnknownMethod {
                name: s.to_owned(),
                known: MethodName::all()
                    .map(MethodName::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A sweepable parameter, named by its flag (and its JSON / config key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    /// `--p` (`p`): DICE / HIMPLoS head sparsity, ASH / SCALE activation percentile.
    P,
    /// `--clip` (`clip`): activation clip.
    Clip,
    /// `--temperature` (`temperature`).
    Temperature,
    /// `--p-a` (`p_a`): LINe activation-mask percentile.
    PA,
    /// `--p-w` (`p_w`): LINe weight-mask percentile.
    PW,
    /// `--gamma` (`gamma`): GEN's exponent.
    Gamma,
    /// `--top-m` (`top_m`): GEN's `M`.
    TopM,
    /// `--k` (`k`): nearest neighbours.
    K,
    /// `--dim` (`dim`): ViM / Residual principal dimension `D`.
    Dim,
    /// `--bank-fraction` (`bank_fraction`): share of ID-train rows in a KNN / NNGuide bank.
    BankFraction,
    /// `--score` (`score`): the logit score after activation shaping.
    Score,
    /// `--variant` (`variant`): paper or pytorch-ood reading.
    Variant,
}

impl Param {
    /// Every parameter, in expansion order.
    pub const ALL: [Param; 12] = [
        Param::P,
        Param::Clip,
        Param::Temperature,
        Param::PA,
        Param::PW,
        Param::Gamma,
        Param::TopM,
        Param::K,
        Param::Dim,
        Param::BankFraction,
        Param::Score,
        Param::Variant,
    ];

    /// The command-line flag.
    pub fn flag(self) -> &'static str {
        match self {
            Param::P => Sparsity::FLAG,
            Param::Clip => Clip::FLAG,
            Param::Temperature => Temperature::FLAG,
            Param::PA => LinePercentile::ACTIVATION_FLAG,
            Param::PW => LinePercentile::WEIGHT_FLAG,
            Param::Gamma => Gamma::FLAG,
            Param::TopM => TopM::FLAG,
            Param::K => Neighbours::FLAG,
            Param::Dim => Dim::FLAG,
            Param::BankFraction => BankFraction::FLAG,
            Param::Score => ScoreKind::FLAG,
            Param::Variant => Variant::FLAG,
        }
    }

    /// The JSON `params` / config key.
    pub fn key(self) -> &'static str {
        match self {
            Param::P => "p",
            Param::Clip => "clip",
            Param::Temperature => "temperature",
            Param::PA => "p_a",
            Param::PW => "p_w",
            Param::Gamma => "gamma",
            Param::TopM => "top_m",
            Param::K => "k",
            Param::Dim => "dim",
            Param::BankFraction => "bank_fraction",
            Param::Score => "score",
            Param::Variant => "variant",
        }
    }

    /// Parses one value of this parameter as the command line spells it.
    pub fn parse(self, text: &str) -> Result<ParamValue, EvalError> {
        let number = |flag: &'static str, s: &str| {
            s.trim().parse::<f64>().map_err(|_| EvalError::Param {
                flag,
                value: s.to_owned(),
                reason: "not a number",
            })
        };
        Ok(match self {
            Param::P => ParamValue::P(text.parse()?),
            Param::Clip => ParamValue::Clip(text.parse()?),
            Param::Temperature => ParamValue::Temperature(text.parse()?),
            Param::PA => ParamValue::PA(LinePercentile::activation(number(self.flag(), text)?)?),
            Param::PW => ParamValue::PW(LinePercentile::weight(number(self.flag(), text)?)?),
            Param::Gamma => ParamValue::Gamma(text.parse()?),
            Param::TopM => ParamValue::TopM(text.parse()?),
            Param::K => ParamValue::K(text.parse()?),
            Param::Dim => ParamValue::Dim(text.parse()?),
            Param::BankFraction => ParamValue::BankFraction(text.parse()?),
            Param::Score => ParamValue::Score(text.parse()?),
            Param::Variant => ParamValue::Variant(text.parse()?),
        })
    }
}

/// One checked value of one [`Param`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum ParamValue {
    P(Sparsity),
    Clip(Clip),
    Temperature(Temperature),
    PA(LinePercentile),
    PW(LinePercentile),
    Gamma(Gamma),
    TopM(TopM),
    K(Neighbours),
    Dim(Dim),
    BankFraction(BankFraction),
    Score(ScoreKind),
    Variant(Variant),
}

/// The parameters of one setting: each method reads the ones it takes (all of them
/// are set by the expansion); the others are `None`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[allow(missing_docs)]
pub struct Params {
    pub p: Option<Sparsity>,
    pub clip: Option<Clip>,
    pub temperature: Option<Temperature>,
    pub p_a: Option<LinePercentile>,
    pub p_w: Option<LinePercentile>,
    pub gamma: Option<Gamma>,
    pub top_m: Option<TopM>,
    pub k: Option<Neighbours>,
    pub dim: Option<Dim>,
    pub bank_fraction: Option<BankFraction>,
    pub score: Option<ScoreKind>,
    pub variant: Option<Variant>,
}

/// The message of a parameter that the expansion did not supply (a registry bug).
pub(crate) const MISSING: &str = "expand() supplies every parameter the method takes";

impl Params {
    /// These parameters with `v` set.
    pub fn with(mut self, v: ParamValue) -> Self {
        match v {
            ParamValue::P(x) => self.p = Some(x),
            ParamValue::Clip(x) => self.clip = Some(x),
            ParamValue::Temperature(x) => self.temperature = Some(x),
            ParamValue::PA(x) => self.p_a = Some(x),
            ParamValue::PW(x) => self.p_w = Some(x),
            ParamValue::Gamma(x) => self.gamma = Some(x),
            ParamValue::TopM(x) => self.top_m = Some(x),
            ParamValue::K(x) => self.k = Some(x),
            ParamValue::Dim(x) => self.dim = Some(x),
            ParamValue::BankFraction(x) => self.bank_fraction = Some(x),
            ParamValue::Score(x) => self.score = Some(x),
            ParamValue::Variant(x) => self.variant = Some(x),
        }
        self
    }

    /// The value of `param`, if set.
    pub fn get(&self, param: Param) -> Option<ParamValue> {
        match param {
            Param::P => self.p.map(ParamValue::P),
            Param::Clip => self.clip.map(ParamValue::Clip),
            Param::Temperature => self.temperature.map(ParamValue::Temperature),
            Param::PA => self.p_a.map(ParamValue::PA),
            Param::PW => self.p_w.map(ParamValue::PW),
            Param::Gamma => self.gamma.map(ParamValue::Gamma),
            Param::TopM => self.top_m.map(ParamValue::TopM),
            Param::K => self.k.map(ParamValue::K),
            Param::Dim => self.dim.map(ParamValue::Dim),
            Param::BankFraction => self.bank_fraction.map(ParamValue::BankFraction),
            Param::Score => self.score.map(ParamValue::Score),
            Param::Variant => self.variant.map(ParamValue::Variant),
        }
    }

    /// The logit score after shaping (energy unless `--score` says otherwise).
    pub fn score_kind(&self) -> ScoreKind {
        self.score.unwrap_or(ScoreKind::Energy)
    }

    /// Whose reading (the paper's unless `--variant pytorch-ood`).
    pub fn variant_or_paper(&self) -> Variant {
        self.variant.unwrap_or(Variant::Paper)
    }
}

/// Lists of checked parameter values, one list per [`Param`] (an empty list = not given).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepValues {
    lists: Vec<(Param, Vec<ParamValue>)>,
}

impl SweepValues {
    /// Parses comma lists as the command line gives them (`--p 0,50,90 --clip 1.0,p90`);
    /// `None` = flag not given. Further parameters: [`SweepValues::set`].
    pub fn parse(
        p: Option<&str>,
        clip: Option<&str>,
        temperature: Option<&str>,
        p_a: Option<&str>,
        p_w: Option<&str>,
    ) -> Result<Self, EvalError> {
        let mut out = Self::default();
        for (param, text) in [
            (Param::P, p),
            (Param::Clip, clip),
            (Param::Temperature, temperature),
            (Param::PA, p_a),
            (Param::PW, p_w),
        ] {
            if let Some(text) = text {
                out.set(param, text)?;
            }
        }
        Ok(out)
    }

    /// Sets the list of `param` from a comma list (`"10,50"`).
    pub fn set(&mut self, param: Param, text: &str) -> Result<(), EvalError> {
        let values = text
            .split(',')
            .map(|v| param.parse(v))
            .collect::<Result<Vec<_>, _>>()?;
        self.lists.retain(|(p, _)| *p != param);
        self.lists.push((param, values));
        Ok(())
    }

    /// The values given for `param` (empty when not given).
    pub fn of(&self, param: Param) -> &[ParamValue] {
        self.lists
            .iter()
            .find(|(p, _)| *p == param)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    /// True when no parameter has values.
    pub fn is_empty(&self) -> bool {
        self.lists.iter().all(|(_, v)| v.is_empty())
    }

    /// Which parameters have values.
    fn given(&self) -> Vec<Param> {
        Param::ALL
            .into_iter()
            .filter(|&p| !self.of(p).is_empty())
            .collect()
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
                    applies_to: names(&mut MethodName::all().filter(|m| m.takes(param))),
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

/// The cartesian product for one method, in [`Param::ALL`] order.
fn expand(method: MethodName, given: &SweepValues) -> Vec<Setting> {
    let defaults = method.method().defaults();
    let mut out = vec![Params::default()];
    for param in Param::ALL {
        if !method.takes(param) {
            continue;
        }
        let values: Vec<ParamValue> = match given.of(param) {
            [] => defaults.get(param).into_iter().collect(),
            list => list.to_vec(),
        };
        if values.is_empty() {
            // Optional parameters without a default (e.g. `--score`) stay unset.
            continue;
        }
        out = out
            .into_iter()
            .flat_map(|p| values.iter().map(move |&v| p.with(v)))
            .collect();
    }
    out.into_iter()
        .map(|params| Setting { method, params })
        .collect()
}

/// One configuration: a method with all its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting {
    method: MethodName,
    params: Params,
}

impl Setting {
    /// A setting from its parts (the method's defaults are not filled in).
    pub fn new(method: MethodName, params: Params) -> Self {
        Self { method, params }
    }

    /// The method of this setting.
    pub fn method(&self) -> MethodName {
        self.method
    }

    /// Its parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The clip of this setting, if it has one.
    pub fn clip(&self) -> Option<Clip> {
        self.params.clip
    }

    /// The parameters as the JSON report writes them, keys in [`Param::ALL`] order; a
    /// percentile clip is written as its resolved value `clip` with `clip_percentile`
    /// beside it; `score = energy` and `variant = paper` (the defaults) are left out.
    pub fn params_json(&self, resolved_clip: Option<f64>) -> Map<String, Value> {
        let mut m = Map::new();
        for param in Param::ALL {
            let Some(v) = self.params.get(param) else {
                continue;
            };
            let key = param.key().to_owned();
            match v {
                ParamValue::P(p) => {
                    m.insert(key, json!(p.percent()));
                }
                ParamValue::Clip(Clip::Value(v)) => {
                    m.insert(key, json!(v));
                }
                ParamValue::Clip(Clip::Percentile(q)) => {
                    m.insert(key, json!(resolved_clip));
                    m.insert("clip_percentile".into(), json!(q));
                }
                ParamValue::Temperature(t) => {
                    m.insert(key, json!(t.get()));
                }
                ParamValue::PA(p) | ParamValue::PW(p) => {
                    m.insert(key, json!(p.percent()));
                }
                ParamValue::Gamma(g) => {
                    m.insert(key, json!(g.get()));
                }
                ParamValue::TopM(n) => {
                    m.insert(key, json!(n.get()));
                }
                ParamValue::K(n) => {
                    m.insert(key, json!(n.get()));
                }
                ParamValue::Dim(n) => {
                    m.insert(key, json!(n.get()));
                }
                ParamValue::BankFraction(f) => {
                    m.insert(key, json!(f.get()));
                }
                ParamValue::Score(ScoreKind::Energy) | ParamValue::Variant(Variant::Paper) => {}
                ParamValue::Score(s) => {
                    m.insert(key, json!(s.as_str()));
                }
                ParamValue::Variant(v) => {
                    m.insert(key, json!(v.as_str()));
                }
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

    fn method(name: &str) -> MethodName {
        name.parse().unwrap()
    }

    #[test]
    fn cartesian_product_in_flag_order() {
        let s = spec("dice-react", Some("50,90"), Some("1.0,p90"), None)
            .settings()
            .unwrap();
        let p = |v| Some(Sparsity::new(v).unwrap());
        let setting = |pv, clip| {
            Setting::new(
                method("dice-react"),
                Params {
                    p: pv,
                    clip: Some(clip),
                    ..Params::default()
                },
            )
        };
        assert_eq!(
            s,
            vec![
                setting(p(50.0), Clip::Value(1.0)),
                setting(p(50.0), Clip::Percentile(90.0)),
                setting(p(90.0), Clip::Value(1.0)),
                setting(p(90.0), Clip::Percentile(90.0)),
            ]
        );
    }

    #[test]
    fn flags_apply_to_the_methods_that_take_them_and_defaults_fill_the_rest() {
        let s = spec("msp,dice,himplos", Some("70"), None, None)
            .settings()
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], Setting::new(method("msp"), Params::default()));
        assert_eq!(s[1].params().p, Some(Sparsity::new(70.0).unwrap()));
        assert_eq!(
            *s[2].params(),
            Params {
                p: Some(Sparsity::new(70.0).unwrap()),
                clip: Some(Clip::Value(1.6)),
                temperature: Some(Temperature::ONE),
                ..Params::default()
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
            "--p does not apply to msp, energy (it applies to dice, dice-react, himplos, ash-p, ash-b, ash-s, scale)"
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
            "DICE_REACT".parse::<MethodName>().unwrap().as_str(),
            "dice-react"
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
        let react = |clip| {
            Setting::new(
                method("react"),
                Params {
                    clip: Some(clip),
                    ..Params::default()
                },
            )
        };
        let j = react(Clip::Percentile(90.0)).params_json(Some(0.5));
        assert_eq!(j["clip"], 0.5);
        assert_eq!(j["clip_percentile"], 90.0);
        let j = react(Clip::Value(1.0)).params_json(None);
        assert!(!j.contains_key("clip_percentile"));
    }

    #[test]
    fn new_parameters_sweep_and_default_scores_stay_out_of_the_report() {
        let mut values = SweepValues::default();
        values.set(Param::K, "10,50").unwrap();
        let s = SweepSpec {
            methods: vec![method("knn")],
            values,
        }
        .settings()
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].params_json(None)["k"], 50);
        assert_eq!(s[1].params_json(None)["bank_fraction"], 1.0);
        let mut values = SweepValues::default();
        values.set(Param::Score, "energy,gen").unwrap();
        let s = SweepSpec {
            methods: vec![method("react")],
            values,
        }
        .settings()
        .unwrap();
        assert!(!s[0].params_json(Some(1.0)).contains_key("score"));
        assert_eq!(s[1].params_json(Some(1.0))["score"], "gen");
        let mut values = SweepValues::default();
        values.set(Param::K, "5").unwrap();
        let e = SweepSpec {
            methods: vec![method("vim")],
            values,
        }
        .settings()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--k does not apply to vim (it applies to knn, nnguide)"
        );
    }
}
