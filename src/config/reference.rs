//! The configuration reference (`docs/configuration.md`), generated from the configuration
//! structs: their JSON Schema (schemars reads the doc comments, the serde attributes and
//! the `default = …` functions) and the built-in defaults file. Written from the code so
//! that it cannot drift from it; a test fails when the checked-in file is stale.

use serde_json::{Map, Value};

use super::{Config, DEFAULTS, ENV_PREFIX};

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(Config)).expect("a schema serialises");
    let defaults = builtin_defaults();
    let mut doc = Reference { defs: &schema["$defs"], defaults: &defaults, out: String::new() };
    doc.out.push_str(
        "# Configuration reference\n\n\
         Generated from the configuration structs by `order-cdc config-reference`; do not edit.\n\n\
         Every key can be set in the TOML file given with `--config` or in the environment, which wins: \
         `ORDER_CDC__` then the key's path in capitals, with `__` between its parts \
         (`pipelines.orders.batch_size` is `ORDER_CDC__PIPELINES__ORDERS__BATCH_SIZE`). \
         Defaults come from the built-in `config/default.toml`, then from the code. \
         Durations are written like `5s`, `250ms`, `1h30m`. \
         Lists are set in the file only.\n",
    );
    doc.table(&[], &schema, None);
    doc.out
}

/// `config/default.toml` as JSON, to look a key's built-in default up by its path.
fn builtin_defaults() -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .expect("the built-in defaults parse")
}

struct Reference<'a> {
    defs: &'a Value,
    defaults: &'a Value,
    out: String,
}

impl Reference<'_> {
    /// One TOML table (`path`), its keys in a Markdown table, then its sub-tables.
    /// `kind` is the tag that selects this variant of a tagged table.
    fn table(&mut self, path: &[String], schema: &Value, kind: Option<&str>) {
        let defs = self.defs;
        let schema = resolve(defs, schema);
        let empty = Map::new();
        let properties = schema["properties"].as_object().unwrap_or(&empty);
        let required: Vec<&str> = schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let mut rows = Vec::new();
        let mut tables = Vec::new();
        for (name, property) in properties {
            let mut key = path.to_vec();
            key.push(name.clone());
            let resolved = resolve(defs, property);
            if let Some(variants) = resolved["oneOf"].as_array().filter(|v| v.iter().all(|v| v["type"] == "object")) {
                tables.extend(variants.iter().map(|v| (key.clone(), v.clone(), tag(v))));
            } else if resolved["properties"].is_object() {
                tables.push((key, resolved.clone(), None));
            } else if let Some(entry) = resolved["additionalProperties"].as_object().map(|_| resolve(defs, &resolved["additionalProperties"])).filter(|e| e["properties"].is_object()) {
                key.push("<name>".into());
                tables.push((key, entry.clone(), None));
            } else {
                let default = self.default(&key, property, resolved);
                let needed = required.contains(&name.as_str()) && default.is_none();
                rows.push(self.row(&key, property, resolved, default, needed));
            }
        }
        if !rows.is_empty() {
            let header = match kind {
                Some(kind) => format!("`[{}]` with `kind = \"{kind}\"`", path.join(".")),
                None => format!("`[{}]`", path.join(".")),
            };
            self.out.push_str(&format!("\n## {header}\n\n"));
            if let Some(about) = description(schema) {
                self.out.push_str(&format!("{about}\n\n"));
            }
            self.out.push_str("| Key | Type | Default | Environment variable | Meaning |\n|---|---|---|---|---|\n");
            for row in rows {
                self.out.push_str(&row);
            }
        }
        for (key, schema, kind) in tables {
            self.table(&key, &schema, kind.as_deref());
        }
    }

    fn row(&self, key: &[String], property: &Value, resolved: &Value, default: Option<String>, needed: bool) -> String {
        let name = key.last().expect("a key has a name");
        let (name, env) = match resolved["additionalProperties"].as_object() {
            // A map of plain values: one key per entry.
            Some(_) => (format!("{name}.<name>"), format!("{}__<NAME>", env_var(key))),
            None => (name.clone(), env_var(key)),
        };
        let mut meaning = description(property).unwrap_or_default();
        if let Some(choices) = choices(resolved) {
            meaning = if meaning.is_empty() { choices } else { format!("{meaning} {choices}") };
        }
        let default = match (default, needed, resolved["const"].as_str()) {
            // The tag of a tagged table: the value that selects it.
            (_, _, Some(tag)) => {
                meaning = "Selects this kind.".into();
                format!("`\"{tag}\"` (required)")
            }
            (Some(d), _, _) => d,
            (None, true, _) => "required".into(),
            (None, false, _) => "none".into(),
        };
        format!("| `{name}` | {} | {default} | `{env}` | {} |\n", type_name(self.defs, resolved), meaning.replace('|', "\\|"))
    }

    /// The built-in default (`config/default.toml`), else the code's, as TOML would write it.
    fn default(&self, key: &[String], property: &Value, resolved: &Value) -> Option<String> {
        let builtin = key.iter().try_fold(self.defaults, |v, k| v.get(k));
        let value = builtin.or_else(|| property.get("default")).or_else(|| resolved.get("default"))?;
        match value {
            Value::Null => None,
            Value::Object(m) if m.is_empty() => None,
            Value::Object(m) => Some(m.iter().map(|(k, v)| format!("`{k} = {v}`")).collect::<Vec<_>>().join("<br>")),
            v => Some(format!("`{v}`")),
        }
    }
}

/// Follows a `$ref` into `defs`, and an `Option` (`anyOf` with `null`) to what it wraps.
fn resolve<'s>(defs: &'s Value, schema: &'s Value) -> &'s Value {
    if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        return resolve(defs, &defs[name]);
    }
    if let Some(options) = schema["anyOf"].as_array() {
        let some: Vec<&Value> = options.iter().filter(|o| o["type"] != "null").collect();
        if let [one] = some[..] {
            return resolve(defs, one);
        }
    }
    schema
}

/// The value of a tagged variant's `kind`.
fn tag(variant: &Value) -> Option<String> {
    variant["properties"]["kind"]["const"].as_str().map(str::to_string)
}

fn description(schema: &Value) -> Option<String> {
    let text = schema["description"].as_str()?;
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// The values an enumeration takes, each with its meaning when it has one.
fn choices(schema: &Value) -> Option<String> {
    if let Some(values) = schema["enum"].as_array() {
        return Some(format!("One of {}.", values.iter().map(|v| format!("`{}`", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", ")));
    }
    let variants = schema["oneOf"].as_array()?;
    let described: Vec<String> = variants
        .iter()
        .filter_map(|v| {
            let value = v["const"].as_str().or_else(|| v["enum"][0].as_str())?;
            Some(match description(v) {
                Some(d) => format!("`{value}`: {}", d.trim_end_matches('.')),
                None => format!("`{value}`"),
            })
        })
        .collect();
    (!described.is_empty()).then(|| format!("One of: {}.", described.join("; ")))
}

fn type_name(defs: &Value, schema: &Value) -> String {
    if schema["format"] == "duration" {
        return "duration".into();
    }
    if schema["enum"].is_array() || schema["oneOf"].is_array() {
        return "string".into();
    }
    let of = |s: &Value| resolve(defs, s)["type"].as_str().map(str::to_string).unwrap_or_else(|| "value".into());
    // An `Option`'s `["string", "null"]`.
    let plain = schema["type"].as_array().and_then(|types| types.iter().find(|t| *t != "null"));
    match plain.unwrap_or(&schema["type"]).as_str() {
        Some("array") => format!("list of {}", of(&schema["items"])),
        Some("object") => format!("map of {}", of(&schema["additionalProperties"])),
        Some(t) => t.into(),
        None => "value".into(),
    }
}

fn env_var(key: &[String]) -> String {
    let parts: Vec<String> = key.iter().map(|k| if k == "<name>" { "<NAME>".into() } else { k.to_uppercase() }).collect();
    format!("{ENV_PREFIX}__{}", parts.join("__"))
}

#[cfg(test)]
mod tests {
    /// The checked-in reference is what the code generates. After changing the
    /// configuration: `cargo run -- config-reference > docs/configuration.md`.
    #[test]
    fn the_checked_in_reference_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == super::markdown(),
            "docs/configuration.md is stale: run `cargo run --release -- config-reference > docs/configuration.md`"
        );
    }
}
