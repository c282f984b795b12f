//! What criterion does not expose, shared by the benches: its filter (taken as a
//! plain substring) and whether it only tests or lists the benchmarks.

pub struct Args {
    pub filter: Option<String>,
    pub quick: bool,
}

impl Args {
    pub fn parse() -> Self {
        const TAKES_VALUE: &[&str] = &[
            "--warm-up-time",
            "--measurement-time",
            "--sample-size",
            "--save-baseline",
            "--baseline",
            "--baseline-lenient",
            "--load-baseline",
            "--output-format",
            "--color",
            "--profile-time",
            "--noise-threshold",
            "--confidence-level",
            "--significance-level",
            "--nresamples",
            "--plotting-backend",
            "--format",
            "-c",
            "-s",
            "-b",
        ];
        let mut filter = None;
        let mut quick = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if TAKES_VALUE.contains(&arg.as_str()) {
                if arg == "--profile-time" {
                    quick = true;
                }
                args.next();
            } else if arg == "--test" || arg == "--list" {
                quick = true;
            } else if !arg.starts_with('-') && filter.is_none() {
                filter = Some(arg);
            }
        }
        Args { filter, quick }
    }

    /// Whether to run the interleaved section `id`.
    pub fn wants(&self, id: &str) -> bool {
        !self.quick
            && self
                .filter
                .as_deref()
                .is_none_or(|filter| id.contains(filter))
    }
}
