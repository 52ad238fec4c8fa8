//! The sampler and schedule of an API request as A1111's API resolves them (spec §f.1-2,
//! `sd_samplers.get_sampler_and_scheduler`): `sampler_name or sampler_index`; a legacy name
//! ("DPM++ 2M Karras") is split into sampler and schedule, but an explicit `scheduler` beats
//! the suffix; an unknown sampler silently becomes DPM++ 2M, an unknown schedule Automatic.

use crate::daemon::event::SamplerFacts;
use crate::sampling::schedule::Schedule;

/// A1111's fallback for an unknown sampler name.
pub const FALLBACK_SAMPLER: &str = "DPM++ 2M";

/// The resolved choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerChoice {
    /// The sampler's name as the daemon lists it.
    pub sampler: String,
    /// The schedule (Automatic: the sampler's default).
    pub schedule: Schedule,
    /// What was replaced, for the log.
    pub warnings: Vec<String>,
}

fn find<'a>(samplers: &'a [SamplerFacts], name: &str) -> Option<&'a SamplerFacts> {
    let name = name.trim();
    samplers.iter().find(|s| {
        s.name.eq_ignore_ascii_case(name) || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    })
}

/// The sampler named `name` and the schedule a legacy suffix names, if `name` has one.
fn split_legacy<'a>(
    samplers: &'a [SamplerFacts],
    name: &str,
) -> Option<(&'a SamplerFacts, Option<Schedule>)> {
    if let Some(found) = find(samplers, name) {
        return Some((found, None));
    }
    let name = name.trim();
    Schedule::ALL.into_iter().find_map(|schedule| {
        std::iter::once(schedule.label())
            .chain([schedule.name()])
            .chain(schedule.aliases().iter().copied())
            .find_map(|suffix| {
                let split = name.len().checked_sub(suffix.len() + 1)?;
                let tail = name.get(split..)?;
                if !tail.eq_ignore_ascii_case(&format!(" {suffix}")) {
                    return None;
                }
                find(samplers, name.get(..split)?).map(|found| (found, Some(schedule)))
            })
    })
}

/// Resolves `sampler_name or sampler_index` (`name`) and `scheduler` over the daemon's
/// samplers.
pub fn resolve(samplers: &[SamplerFacts], name: &str, scheduler: Option<&str>) -> SamplerChoice {
    let mut warnings = Vec::new();
    let (sampler, suffix) = match split_legacy(samplers, name) {
        Some((found, suffix)) => (found.name.clone(), suffix),
        None => {
            warnings.push(format!(
                "sampler \"{name}\" not found; using {FALLBACK_SAMPLER} as A1111 does"
            ));
            (FALLBACK_SAMPLER.to_string(), None)
        }
    };
    let explicit = scheduler.map(str::trim).filter(|s| !s.is_empty());
    let schedule = match explicit {
        Some(text) => Schedule::from_name(text).unwrap_or_else(|_| {
            warnings.push(format!(
                "schedule type \"{text}\" not found; using Automatic"
            ));
            Schedule::Automatic
        }),
        None => suffix.unwrap_or(Schedule::Automatic),
    };
    SamplerChoice {
        sampler,
        schedule,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, aliases: &[&str]) -> SamplerFacts {
        SamplerFacts {
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            plugin: "builtin".into(),
            default_schedule: None,
            timesteps: false,
            options: Default::default(),
        }
    }

    #[test]
    fn legacy_names_split_unless_a_scheduler_is_given() {
        let samplers = [facts("DPM++ 2M", &["k_dpmpp_2m"]), facts("LMS", &["k_lms"])];
        let choice = resolve(&samplers, "LMS Karras", None);
        assert_eq!(
            (choice.sampler.as_str(), choice.schedule),
            ("LMS", Schedule::Karras)
        );
        // webuiapi always sends "automatic": LMS then runs its Automatic schedule.
        let choice = resolve(&samplers, "LMS Karras", Some("automatic"));
        assert_eq!(
            (choice.sampler.as_str(), choice.schedule),
            ("LMS", Schedule::Automatic)
        );
        let choice = resolve(&samplers, "k_dpmpp_2m", Some("Exponential"));
        assert_eq!(
            (choice.sampler.as_str(), choice.schedule),
            ("DPM++ 2M", Schedule::Exponential)
        );
        let choice = resolve(&samplers, "Nonsense", Some("nope"));
        assert_eq!(
            (choice.sampler.as_str(), choice.schedule),
            ("DPM++ 2M", Schedule::Automatic)
        );
        assert_eq!(choice.warnings.len(), 2);
    }
}
