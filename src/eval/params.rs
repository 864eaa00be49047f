//! Checked hyperparameters: each is validated once, where it enters (command line or
//! config), and carries its meaning from then on. Errors name the flag and the value.

use std::fmt;
use std::str::FromStr;

use super::EvalError;

fn param_error(flag: &'static str, value: impl fmt::Display, reason: &'static str) -> EvalError {
    EvalError::Param {
        flag,
        value: value.to_string(),
        reason,
    }
}

fn parse_number(flag: &'static str, text: &str) -> Result<f64, EvalError> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| param_error(flag, text, "not a number"))
}

/// Head sparsity `p` in percent, `0 <= p < 100` (flag `--p`): DICE keeps the weights whose
/// contribution `mu * W` lies strictly above the `p`-th percentile; HIMPLoS keeps the
/// weights at or above the row-wise `p`-th percentile. `p = 0` is the plain head.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Sparsity(f64);

impl Sparsity {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--p";

    /// Checks `0 <= p < 100`.
    pub fn new(p: f64) -> Result<Self, EvalError> {
        if (0.0..100.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(param_error(Self::FLAG, p, "sparsity must be in [0, 100)"))
        }
    }

    /// `p` in percent.
    pub fn percent(self) -> f64 {
        self.0
    }

    /// True for `p = 0`: no weight is removed (DICE's `p=None`).
    pub fn is_plain(self) -> bool {
        self.0 == 0.0
    }
}

impl FromStr for Sparsity {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_number(Self::FLAG, s)?)
    }
}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Activation clipping threshold as the user states it (flag `--clip`): a value
/// (`"1.0"`), or a percentile of all ID-train activation values (`"p90"`, `"p99.5"`).
/// Resolve it to a [`ClipValue`] with [`Clip::resolve`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    /// A fixed threshold `c`, finite and `>= 0`.
    Value(f64),
    /// The `q`-th percentile (`0 <= q <= 100`) of the ID-train activations.
    Percentile(f64),
}

impl Clip {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--clip";

    /// A checked fixed threshold (finite, `>= 0`).
    pub fn value(c: f64) -> Result<Self, EvalError> {
        ClipValue::new(c).map(|c| Self::Value(c.get()))
    }

    /// A checked percentile `0 <= q <= 100` of the ID-train activations.
    pub fn percentile(q: f64) -> Result<Self, EvalError> {
        if (0.0..=100.0).contains(&q) {
            Ok(Self::Percentile(q))
        } else {
            Err(param_error(
                Self::FLAG,
                format_args!("p{q}"),
                "clip percentile must be in [0, 100]",
            ))
        }
    }

    /// The threshold itself: a fixed value as is, a percentile through
    /// `train_percentile(q)` (the `q`-th percentile of all ID-train activations).
    pub fn resolve(
        self,
        train_percentile: impl FnOnce(f64) -> Result<f64, EvalError>,
    ) -> Result<ClipValue, EvalError> {
        match self {
            Self::Value(c) => ClipValue::new(c),
            Self::Percentile(q) => {
                let c = train_percentile(q)?;
                ClipValue::new(c).map_err(|_| {
                    param_error(
                        Self::FLAG,
                        format_args!("p{q} (= {c})"),
                        "clip percentile resolves to a negative or non-finite threshold",
                    )
                })
            }
        }
    }
}

impl FromStr for Clip {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t.strip_prefix('p') {
            Some(q) => {
                Self::percentile(parse_number(Self::FLAG, q).map_err(|_| {
                    param_error(Self::FLAG, s, "expected a number or pQ (e.g. p90)")
                })?)
            }
            None => {
                Self::value(parse_number(Self::FLAG, t).map_err(|_| {
                    param_error(Self::FLAG, s, "expected a number or pQ (e.g. p90)")
                })?)
            }
        }
    }
}

impl fmt::Display for Clip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(c) => write!(f, "{c}"),
            Self::Percentile(q) => write!(f, "p{q}"),
        }
    }
}

/// A resolved clipping threshold `c`, finite and `>= 0`: features are replaced by
/// `min(h, c)` elementwise (ReAct).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct ClipValue(f64);

impl ClipValue {
    /// Checks that `c` is finite and `>= 0`.
    pub fn new(c: f64) -> Result<Self, EvalError> {
        if c.is_finite() && c >= 0.0 {
            Ok(Self(c))
        } else {
            Err(param_error(
                Clip::FLAG,
                c,
                "clip must be a finite number >= 0",
            ))
        }
    }

    /// The threshold `c`.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Softmax / energy temperature `T`, finite and `> 0` (flag `--temperature`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Temperature(f64);

impl Temperature {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--temperature";
    /// `T = 1`, the papers' default.
    pub const ONE: Self = Self(1.0);

    /// Checks that `T` is finite and `> 0`.
    pub fn new(t: f64) -> Result<Self, EvalError> {
        if t.is_finite() && t > 0.0 {
            Ok(Self(t))
        } else {
            Err(param_error(
                Self::FLAG,
                t,
                "temperature must be a finite number > 0",
            ))
        }
    }

    /// The temperature `T`.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for Temperature {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_number(Self::FLAG, s)?)
    }
}

/// A LINe mask percentile in percent, `0 <= p < 100`: `p_a` (flag `--p-a`) for the
/// activation masks `A[c]`, `p_w` (flag `--p-w`) for the weight masks `B[c]`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct LinePercentile(f64);

impl LinePercentile {
    /// The flag of the activation-mask percentile.
    pub const ACTIVATION_FLAG: &'static str = "--p-a";
    /// The flag of the weight-mask percentile.
    pub const WEIGHT_FLAG: &'static str = "--p-w";

    /// Checks the activation-mask percentile `p_a` (`0 <= p_a < 100`).
    pub fn activation(p: f64) -> Result<Self, EvalError> {
        Self::checked(Self::ACTIVATION_FLAG, p)
    }

    /// Checks the weight-mask percentile `p_w` (`0 <= p_w < 100`).
    pub fn weight(p: f64) -> Result<Self, EvalError> {
        Self::checked(Self::WEIGHT_FLAG, p)
    }

    fn checked(flag: &'static str, p: f64) -> Result<Self, EvalError> {
        if (0.0..100.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(param_error(flag, p, "LINe percentile must be in [0, 100)"))
        }
    }

    /// `p` in percent.
    pub fn percent(self) -> f64 {
        self.0
    }
}

/// Parses a positive whole number for `flag`.
fn parse_count(flag: &'static str, text: &str) -> Result<usize, EvalError> {
    let v = parse_number(flag, text)?;
    if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        Ok(v as usize)
    } else {
        Err(param_error(
            flag,
            text.trim(),
            "must be a whole number >= 1",
        ))
    }
}

/// A whole-number parameter `>= 1`.
macro_rules! count_param {
    ($(#[$doc:meta])* $name:ident, $flag:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(usize);

        impl $name {
            /// The flag this parameter comes from.
            pub const FLAG: &'static str = $flag;

            /// Checks `n >= 1`.
            pub fn new(n: usize) -> Result<Self, EvalError> {
                if n >= 1 {
                    Ok(Self(n))
                } else {
                    Err(param_error(Self::FLAG, n, "must be a whole number >= 1"))
                }
            }

            /// The number.
            pub fn get(self) -> usize {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = EvalError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(parse_count(Self::FLAG, s)?)
            }
        }
    };
}

count_param!(
    /// GEN's `M` (flag `--top-m`): how many of the largest softmax probabilities enter
    /// the generalised entropy (capped at `C`).
    TopM,
    "--top-m"
);
count_param!(
    /// The number of nearest neighbours `k` (flag `--k`, KNN and NNGuide); at most the
    /// bank's rows (checked when the bank is built).
    Neighbours,
    "--k"
);
count_param!(
    /// ViM / Residual's principal dimension `D` (flag `--dim`); `D < m` is checked
    /// against the features when the method is fitted.
    Dim,
    "--dim"
);

/// GEN's exponent `gamma`, finite and `> 0` (flag `--gamma`).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Gamma(f64);

impl Gamma {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--gamma";

    /// Checks that `gamma` is finite and `> 0`.
    pub fn new(g: f64) -> Result<Self, EvalError> {
        if g.is_finite() && g > 0.0 {
            Ok(Self(g))
        } else {
            Err(param_error(
                Self::FLAG,
                g,
                "gamma must be a finite number > 0",
            ))
        }
    }

    /// `gamma`.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for Gamma {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_number(Self::FLAG, s)?)
    }
}

/// The fraction of the ID-train rows in a nearest-neighbour bank, `0 < f <= 1` (flag
/// `--bank-fraction`); the rows are drawn with a fixed seed, so a fraction gives the
/// same bank every run.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct BankFraction(f64);

impl BankFraction {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--bank-fraction";
    /// The whole ID-train split.
    pub const ALL: Self = Self(1.0);

    /// Checks `0 < f <= 1`.
    pub fn new(f: f64) -> Result<Self, EvalError> {
        if f > 0.0 && f <= 1.0 {
            Ok(Self(f))
        } else {
            Err(param_error(
                Self::FLAG,
                f,
                "bank fraction must be in (0, 1]",
            ))
        }
    }

    /// The fraction.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl FromStr for BankFraction {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(parse_number(Self::FLAG, s)?)
    }
}

/// Which logit score follows activation shaping (flag `--score`; ReAct, ASH, SCALE):
/// the papers use energy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoreKind {
    /// `logsumexp(z)` (the default).
    Energy,
    /// `max softmax(z)`.
    Msp,
    /// `max z`.
    MaxLogit,
    /// GEN with its default `gamma = 0.1` and `M = C` (all classes).
    Gen,
}

impl ScoreKind {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--score";

    /// The name as written on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Energy => "energy",
            Self::Msp => "msp",
            Self::MaxLogit => "maxlogit",
            Self::Gen => "gen",
        }
    }
}

impl FromStr for ScoreKind {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "energy" => Ok(Self::Energy),
            "msp" => Ok(Self::Msp),
            "maxlogit" => Ok(Self::MaxLogit),
            "gen" => Ok(Self::Gen),
            _ => Err(param_error(
                Self::FLAG,
                s,
                "expected energy, msp, maxlogit or gen",
            )),
        }
    }
}

/// Whose reading of a method (flag `--variant`): the paper's own code (the default) or
/// pytorch-ood 0.4.0's, where the two differ (see each method's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The paper's reference code.
    Paper,
    /// pytorch-ood 0.4.0.
    PytorchOod,
}

impl Variant {
    /// The flag this parameter comes from.
    pub const FLAG: &'static str = "--variant";

    /// The name as written on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::PytorchOod => "pytorch-ood",
        }
    }
}

impl FromStr for Variant {
    type Err = EvalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "paper" => Ok(Self::Paper),
            "pytorch-ood" => Ok(Self::PytorchOod),
            _ => Err(param_error(Self::FLAG, s, "expected paper or pytorch-ood")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_domain_and_message() {
        assert!(Sparsity::new(0.0).unwrap().is_plain());
        assert_eq!(Sparsity::new(90.0).unwrap().percent(), 90.0);
        assert!(!Sparsity::new(99.9).unwrap().is_plain());
        let e = Sparsity::new(100.0).unwrap_err();
        assert_eq!(e.to_string(), "--p 100: sparsity must be in [0, 100)");
        assert!(Sparsity::new(-1.0).is_err());
        assert!(Sparsity::new(f64::NAN).is_err());
        assert_eq!("70".parse::<Sparsity>().unwrap().percent(), 70.0);
        assert_eq!(
            "x".parse::<Sparsity>().unwrap_err().to_string(),
            "--p x: not a number"
        );
    }

    #[test]
    fn clip_parses_values_and_percentiles() {
        assert_eq!("1.0".parse::<Clip>().unwrap(), Clip::Value(1.0));
        assert_eq!("0".parse::<Clip>().unwrap(), Clip::Value(0.0));
        assert_eq!("p90".parse::<Clip>().unwrap(), Clip::Percentile(90.0));
        assert_eq!("p99.5".parse::<Clip>().unwrap(), Clip::Percentile(99.5));
        assert_eq!("p100".parse::<Clip>().unwrap(), Clip::Percentile(100.0));
        assert_eq!(
            "-1".parse::<Clip>().unwrap_err().to_string(),
            "--clip -1: clip must be a finite number >= 0"
        );
        assert_eq!(
            "p101".parse::<Clip>().unwrap_err().to_string(),
            "--clip p101: clip percentile must be in [0, 100]"
        );
        assert_eq!(
            "pq".parse::<Clip>().unwrap_err().to_string(),
            "--clip pq: expected a number or pQ (e.g. p90)"
        );
        assert!("inf".parse::<Clip>().is_err());
        assert!("nan".parse::<Clip>().is_err());
        assert_eq!(Clip::Percentile(99.5).to_string(), "p99.5");
        assert_eq!(Clip::Value(1.0).to_string(), "1");
    }

    #[test]
    fn clip_resolves_through_the_train_percentile() {
        let c = Clip::Percentile(90.0).resolve(|q| Ok(q / 100.0)).unwrap();
        assert_eq!(c.get(), 0.9);
        let c = Clip::Value(1.5)
            .resolve(|_| unreachable!("a fixed value needs no percentile"))
            .unwrap();
        assert_eq!(c.get(), 1.5);
        let e = Clip::Percentile(10.0).resolve(|_| Ok(-0.5)).unwrap_err();
        assert!(e.to_string().starts_with("--clip p10 (= -0.5):"), "{e}");
    }

    #[test]
    fn temperature_and_line_percentiles() {
        assert_eq!(Temperature::new(10.0).unwrap().get(), 10.0);
        assert_eq!(
            Temperature::new(0.0).unwrap_err().to_string(),
            "--temperature 0: temperature must be a finite number > 0"
        );
        assert!(Temperature::new(f64::INFINITY).is_err());
        assert!("1000".parse::<Temperature>().is_ok());
        assert_eq!(LinePercentile::activation(90.0).unwrap().percent(), 90.0);
        assert_eq!(
            LinePercentile::weight(100.0).unwrap_err().to_string(),
            "--p-w 100: LINe percentile must be in [0, 100)"
        );
        assert!(LinePercentile::activation(-0.1).is_err());
    }

    #[test]
    fn zoo_parameters_check_their_domains() {
        assert_eq!("10".parse::<Neighbours>().unwrap().get(), 10);
        assert_eq!(
            "0".parse::<Neighbours>().unwrap_err().to_string(),
            "--k 0: must be a whole number >= 1"
        );
        assert!("2.5".parse::<Dim>().is_err());
        assert_eq!(
            "x".parse::<TopM>().unwrap_err().to_string(),
            "--top-m x: not a number"
        );
        assert_eq!("0.1".parse::<Gamma>().unwrap().get(), 0.1);
        assert!("0".parse::<Gamma>().is_err());
        assert!("1.5".parse::<BankFraction>().is_err());
        assert!("0".parse::<BankFraction>().is_err());
        assert_eq!("0.01".parse::<BankFraction>().unwrap().get(), 0.01);
        assert_eq!("gen".parse::<ScoreKind>().unwrap(), ScoreKind::Gen);
        assert!("odin".parse::<ScoreKind>().is_err());
        assert_eq!(
            "pytorch-ood".parse::<Variant>().unwrap(),
            Variant::PytorchOod
        );
    }
}
