//! Text made from the settings table: `.env.example`, the configuration table of
//! docs/PROTOCOL.md and the settings part of `--help`. The files are generated, and a test
//! fails when one is out of date (`UPDATE_GENERATED=1 cargo test -p ticketgate config::` rewrites
//! them).

use super::table::{Group, SETTINGS, Setting};

/// Marks the generated part of docs/PROTOCOL.md.
pub const PROTOCOL_BEGIN: &str = "<!-- settings table: generated from src/config/table.rs -->";
pub const PROTOCOL_END: &str = "<!-- end of the settings table -->";

/// The default as the docs show it.
fn default_text(setting: &Setting) -> String {
    match (setting.default_text, setting.default) {
        (Some(text), _) => text.to_owned(),
        (None, Some(value)) => format!("`{value}`"),
        (None, None) => "unset".to_owned(),
    }
}

fn bounds_text(setting: &Setting) -> String {
    match setting.kind.bounds() {
        Some((min, max)) => format!("{min} to {max}"),
        None => String::new(),
    }
}

/// The Markdown table of every setting.
pub fn protocol_table() -> String {
    let mut out = String::from("| variable | default | range | meaning |\n|---|---|---|---|\n");
    for setting in SETTINGS {
        let secret = if setting.secret {
            "secret, never logged or printed: "
        } else {
            ""
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {secret}{} |\n",
            setting.name,
            default_text(setting),
            bounds_text(setting),
            setting.doc,
        ));
    }
    out
}

/// `.env.example`: every setting with its default (empty: unset), grouped, each under its doc.
pub fn env_example() -> String {
    let mut out = String::from(
        "# ticketgate configuration, generated from src/config/table.rs (docs/PROTOCOL.md explains\n\
         # each setting). Copy to .env (read from the working directory at start), set these in\n\
         # the environment, or write them in lower case in the CONFIG_FILE (TOML), under the\n\
         # environment. Every value below is the default; empty means unset.\n",
    );
    let mut group: Option<Group> = None;
    for setting in SETTINGS {
        if group != Some(setting.group) {
            group = Some(setting.group);
            out.push_str(&format!("\n# == {} ==\n", setting.group.title()));
        }
        let range = match bounds_text(setting) {
            range if range.is_empty() => range,
            range => format!(" ({range})"),
        };
        let doc = format!("{}{range}", setting.doc.replace('`', ""));
        for line in wrap(&doc, 94) {
            out.push_str(&format!("# {line}\n"));
        }
        out.push_str(&format!(
            "{}={}\n",
            setting.name,
            setting.default.unwrap_or("")
        ));
    }
    out
}

/// The settings part of `--help`.
pub fn help_text() -> String {
    let mut out = String::from(
        "Settings: environment variables, also read from .env in the working directory, over the \
         TOML file CONFIG_FILE names (keys in lower case). `ticketgate config` prints the \
         effective values and where each came from.\n",
    );
    for setting in SETTINGS {
        let range = match bounds_text(setting) {
            range if range.is_empty() => range,
            range => format!(" [{range}]"),
        };
        out.push_str(&format!(
            "\n  {} [default: {}]{range}\n",
            setting.name,
            default_text(setting).replace('`', ""),
        ));
        for line in wrap(&setting.doc.replace('`', ""), 90) {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// docs/PROTOCOL.md with its settings table replaced by the generated one.
pub fn protocol_with_table(protocol: &str) -> Option<String> {
    let (before, rest) = protocol.split_once(PROTOCOL_BEGIN)?;
    let (_, after) = rest.split_once(PROTOCOL_END)?;
    Some(format!(
        "{before}{PROTOCOL_BEGIN}\n{}{PROTOCOL_END}{after}",
        protocol_table()
    ))
}
