//! Tag retention: which tags are pushed and pulled when ([`times`], recorded by the
//! policy layer `policy::access`), every tag with its times ([`tags`]), and what the
//! configured policies decide for each ([`rules`]).

pub mod prune;
pub mod rules;
pub mod tags;
pub mod times;

pub use rules::{Policy, RepoGlob, Rules, Verdict, judge};
pub use tags::{TagInfo, list_tags};
pub use times::AccessTimes;
