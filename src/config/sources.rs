//! Where setting values come from: defaults (the table), the configuration file
//! (`CONFIG_FILE`, TOML) and the environment (with `.env`), merged by figment with the
//! environment winning. Every value remembers its origin for `ticketgate config`.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::ConfigError;
use super::table::{SETTINGS, Setting};
use crate::channels::{ChannelsTable, Namespaces};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    Environment,
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::Environment => write!(f, "environment"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A value as written, before parsing.
#[derive(Debug, Clone)]
pub struct Raw {
    pub text: String,
    pub origin: Origin,
}

/// The set value of every setting that has one, by name, and the file's structured tables.
#[derive(Debug, Default)]
pub struct Values {
    settings: HashMap<&'static str, Raw>,
    /// The `[channels]` table: namespaces and their options (file only).
    pub channels: Namespaces,
}

/// Top-level tables of the file that are not settings.
const TABLES: &[&str] = &["channels"];

const ENVIRONMENT: &str = "environment";

/// The environment (or a test's map) as a figment provider: known names only, empty values
/// counting as unset, keys in lower case like the file's.
struct Environment<'a>(&'a HashMap<String, String>);

impl Provider for Environment<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENVIRONMENT)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = SETTINGS
            .iter()
            .filter_map(|s| {
                let value = self.0.get(s.name)?.trim();
                (!value.is_empty()).then(|| (s.key(), Value::from(value.to_owned())))
            })
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

impl Values {
    /// Merges the configuration file named by `CONFIG_FILE` (in `vars`) under `vars`.
    pub fn load(vars: &HashMap<String, String>) -> Result<Values, ConfigError> {
        let mut figment = Figment::new();
        let file = vars
            .get("CONFIG_FILE")
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if let Some(path) = &file {
            let toml = Toml::file_exact(path);
            let data = toml.data().map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            check_keys(path, data.get(&Profile::Default))?;
            figment = figment.merge(toml);
        }
        let mut values = Values::default();
        if let Some(path) = &file
            && figment.contains("channels")
        {
            let invalid = |reason: String| ConfigError::File {
                path: path.clone(),
                reason: format!("[channels]: {reason}"),
            };
            let table = figment
                .extract_inner::<ChannelsTable>("channels")
                .map_err(|e| invalid(e.to_string()))?;
            values.channels = Namespaces::from_table(table).map_err(invalid)?;
        }
        let figment = figment.merge(Environment(vars));
        for setting in SETTINGS {
            let Ok(value) = figment.find_value(&setting.key()) else {
                continue;
            };
            let origin = match figment.get_metadata(value.tag()) {
                Some(meta) if meta.name == ENVIRONMENT => Origin::Environment,
                _ => Origin::File(file.clone().unwrap_or_default()),
            };
            let text = text_of(&value).ok_or_else(|| ConfigError::Invalid {
                var: setting.name,
                value: String::new(),
                reason: "expected a string, a whole number or true/false".into(),
                origin: origin.clone(),
            })?;
            if !text.is_empty() {
                values.settings.insert(setting.name, Raw { text, origin });
            }
        }
        Ok(values)
    }

    pub fn get(&self, name: &str) -> Option<&Raw> {
        self.settings.get(name)
    }

    /// Every setting with its effective text (redacted for secrets) and origin.
    pub fn effective(&self) -> Vec<(&'static Setting, String, Origin)> {
        SETTINGS
            .iter()
            .map(|setting| match self.settings.get(setting.name) {
                Some(raw) if setting.secret => {
                    (setting, "<redacted>".to_owned(), raw.origin.clone())
                }
                Some(raw) => (setting, raw.text.clone(), raw.origin.clone()),
                None => (
                    setting,
                    setting
                        .default_text
                        .or(setting.default)
                        .unwrap_or("(unset)")
                        .to_owned(),
                    Origin::Default,
                ),
            })
            .collect()
    }
}

/// Every top-level key of the file must name a setting or one of the [`TABLES`].
/// `config_file` itself cannot be set from the file.
fn check_keys(path: &std::path::Path, dict: Option<&Dict>) -> Result<(), ConfigError> {
    for key in dict.into_iter().flat_map(|d| d.keys()) {
        let known = TABLES.contains(&key.as_str())
            || SETTINGS
                .iter()
                .any(|s| s.key() == *key && s.name != "CONFIG_FILE");
        if !known {
            return Err(ConfigError::File {
                path: path.to_owned(),
                reason: format!("unknown key `{key}` (keys are the settings' names in lower case)"),
            });
        }
    }
    Ok(())
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(_, text) => Some(text.trim().to_owned()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, n) => match n.to_i128() {
            Some(n) => Some(n.to_string()),
            // A fraction: the number parsers refuse it with their usual message.
            None => n.to_f64().map(|f| f.to_string()),
        },
        _ => None,
    }
}
