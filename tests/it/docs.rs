//! The documentation stays true: every relative link in the Markdown files
//! reaches a file (and a heading, when it names one), and every JSON example
//! parses; payload examples are valid requests and result examples follow
//! the result schema.

use std::path::{Path, PathBuf};

use intune_attest::core::request::{AttestationRequest, RequestLimits};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md"), root().join("BENCHMARKS.md")];
    for dir in ["docs", "infra", "infra/azure", "events", "tests/fixtures"] {
        if let Ok(entries) = std::fs::read_dir(root().join(dir)) {
            out.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "md")),
            );
        }
    }
    out
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text outside code blocks, and the code blocks with their language.
fn split(text: &str) -> (String, Vec<(String, String)>) {
    let mut prose = String::new();
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some((lang.trim().to_owned(), String::new())),
            }
            continue;
        }
        match current.as_mut() {
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    (prose, blocks)
}

fn anchors(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (prose, _) = split(&text);
    prose
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

fn links(prose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prose;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_reaches_its_file_and_heading() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let (prose, _) = split(&text);
        for link in links(&prose) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            let (target, anchor) = link.split_once('#').unwrap_or((link.as_str(), ""));
            let path = if target.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(target)
            };
            checked += 1;
            if !path.exists() {
                broken.push(format!("{}: {link} (no such file)", file.display()));
            } else if !anchor.is_empty() && path.is_file() && !anchors(&path).contains(&anchor.to_owned()) {
                broken.push(format!("{}: {link} (no such heading)", file.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn json_examples_parse_and_say_what_they_claim() {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/result.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let status_schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/status.schema.json")).unwrap()).unwrap();
    let status_validator = jsonschema::validator_for(&status_schema).unwrap();
    let verdict_schema: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/verdict.schema.json")).unwrap()).unwrap();
    let verdict_validator = jsonschema::validator_for(&verdict_schema).unwrap();
    let (mut payloads, mut results, mut statuses, mut verdicts) = (0, 0, 0, 0);
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (lang, body) in split(&text).1 {
            if lang != "json" {
                continue;
            }
            let value: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{}: a JSON example does not parse ({e}):\n{body}", file.display()));
            if value.get("checked_at").is_some() && value.get("check").is_some() {
                verdicts += 1;
                let errors: Vec<String> = verdict_validator.iter_errors(&value).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            } else if value.get("checked_at").is_some() && value.get("devices").is_some() {
                statuses += 1;
                let errors: Vec<String> = status_validator.iter_errors(&value).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            } else if value.get("schema_version").is_some() && value.get("devices").is_some() {
                results += 1;
                let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            } else if value.get("managed_device_ids").is_some() || value.get("device_filter").is_some() {
                payloads += 1;
                AttestationRequest::from_value(&value, RequestLimits::default())
                    .unwrap_or_else(|e| panic!("{}: a payload example is refused: {e}", file.display()));
            }
        }
    }
    assert!(
        payloads >= 2 && results >= 1 && statuses >= 1 && verdicts >= 1,
        "{payloads} payloads, {results} results, {statuses} status documents, {verdicts} verdicts"
    );
}

/// Every module under `src/` (`path/name.rs`, or a folder with `mod.rs`),
/// found by walking the tree.
fn modules(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            out.push((format!("{prefix}{name}"), name.clone()));
            modules(&path, &format!("{prefix}{name}/"), out);
        } else if let Some(stem) = name.strip_suffix(".rs")
            && !["mod", "lib", "main", "tests"].contains(&stem)
        {
            out.push((format!("{prefix}{stem}"), stem.to_owned()));
        }
    }
}

#[test]
fn the_layout_table_lists_every_module() {
    let design = std::fs::read_to_string(root().join("docs/design.md")).unwrap();
    let layout = design
        .split("\n## Layout")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/design.md has a Layout section");
    let mut found = Vec::new();
    modules(&root().join("src"), "", &mut found);
    assert!(found.len() > 40, "{} modules found", found.len());
    let missing: Vec<&String> = found
        .iter()
        .filter(|(path, name)| {
            !(layout.contains(&format!("`{name}`"))
                || layout.contains(&format!("/{name}`"))
                || layout.contains(&format!("`src/{path}"))
                || layout.contains(&format!("`{path}")))
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from docs/design.md's layout table: {missing:?}"
    );
}

/// The `crate::<module>` paths a file names.
fn crate_uses(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().filter_map(Result::ok) {
            files_under(&entry.path(), out);
        }
    } else if path.is_file() && path.extension().is_some_and(|x| x == "rs") {
        out.push(path.to_owned());
    }
}

#[test]
fn modules_use_only_the_modules_below_them_in_the_crate_docs_list() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    // The order the crate docs list the modules in: "[`name`]" at first mention.
    let mut order: Vec<String> = Vec::new();
    for (i, _) in lib.match_indices("[`") {
        let name: String = lib[i + 2..].chars().take_while(|c| *c != '`').collect();
        if !order.contains(&name) {
            order.push(name);
        }
    }
    let declared: Vec<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    for m in &declared {
        assert!(order.contains(m), "src/lib.rs's list does not name `{m}`");
    }
    let rank = |m: &str| order.iter().position(|o| o == m);
    for m in &declared {
        let mut files = Vec::new();
        files_under(&root().join("src").join(m), &mut files);
        files_under(&root().join("src").join(format!("{m}.rs")), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_uses(&text) {
                if let (Some(u), Some(me)) = (rank(&used), rank(m)) {
                    assert!(
                        u >= me,
                        "{} uses crate::{used}, which src/lib.rs lists above {m}",
                        file.display()
                    );
                }
            }
        }
    }
}

/// The `enum` list of a property in a schema file, nulls left out.
fn schema_enum(file: &str, pointer: &str) -> Vec<String> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
    let mut found = Vec::new();
    find_enum(&schema, pointer, &mut found);
    found
}

fn find_enum(v: &Value, name: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == name
                    && let Some(list) = child.get("enum").and_then(Value::as_array)
                {
                    out.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
                }
                find_enum(child, name, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| find_enum(i, name, out)),
        _ => {}
    }
}

#[test]
fn outcome_and_reason_code_names_are_the_same_in_code_schema_and_docs() {
    use intune_attest::core::outcome::{Outcome, ReasonCode};
    let codes: Vec<String> = ReasonCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(schema_enum("schema/result.schema.json", "reason_code"), codes);
    let outcomes: Vec<String> = Outcome::ALL.iter().map(|o| o.as_str().to_owned()).collect();
    assert_eq!(schema_enum("schema/result.schema.json", "outcome"), outcomes);
    let reference = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    for code in &codes {
        assert!(
            reference.contains(&format!("`{code}`")),
            "docs/reference.md does not name reason_code {code}"
        );
        let json = serde_json::to_value(ReasonCode::ALL[codes.iter().position(|c| c == code).unwrap()]).unwrap();
        assert_eq!(json.as_str(), Some(code.as_str()));
    }
    for o in Outcome::ALL {
        assert_eq!(serde_json::to_value(o).unwrap().as_str(), Some(o.as_str()));
    }
}

#[test]
fn every_command_the_readme_shows_exists_with_its_flags() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut in_sh = false;
    let mut checked = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let command = line.split('#').next().unwrap_or_default();
        let Some(at) = command.find("intune-attest ") else {
            continue;
        };
        let words: Vec<&str> = command[at + "intune-attest ".len()..].split_whitespace().collect();
        // A subcommand's own help, or the top level's for a global flag.
        let sub = words.first().filter(|w| !w.starts_with('-')).copied();
        let mut help = std::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"));
        help.env_clear();
        match sub {
            Some(sub) => help.args([sub, "--help"]),
            None => help.arg("--help"),
        };
        let out = help.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "README: {line}: no such command\n{text}");
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let name = flag.split('=').next().unwrap_or(flag);
            assert!(text.contains(name), "README: {line}: {name} is not a flag of {sub:?}");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} commands found in the README");
}
