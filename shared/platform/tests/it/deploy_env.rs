//! The deployment manifests and the binaries agree on configuration.
//!
//! For every service that docker-compose.yml, deploy/render/render.yaml and
//! the Kubernetes manifests under deploy/civo run from the platform's image:
//!
//! - every environment variable the manifest gives it is one that binary
//!   reads (a misspelt or stale variable is silently ignored at run time:
//!   here it fails);
//! - `JWT_SECRET` is set for each service that verifies tokens and for no
//!   other, `DATABASE_URL` is set for each service with a
//!   database, and no `DATABASE_*` for one without (todo-realtime);
//! - every service is deployed by every manifest.
//!
//! What a binary reads is derived from the sources, so it cannot drift: the
//! upper-case string literals (`"KAFKA_..."`) of the shared crates' sources
//! (`shared/*/src`) and of the service's crate, outside `#[cfg(test)]` code
//! and the test harness (`shared/testing`), plus `RUST_LOG` (tracing's
//! `EnvFilter` reads it without a literal). `shared/consumer` counts only for
//! the crates that configure a consumer group (`ConsumerConfig`), whose
//! `CONSUMER_*` variables it reads.

use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Binary → the crate that builds it.
const SERVICES: &[(&str, &str)] = &[
    ("todo-api", "producer-api"),
    ("todo-recurring", "consumers/recurring"),
    ("todo-notifier", "consumers/notification"),
    ("todo-audit", "consumers/audit"),
    ("todo-realtime", "consumers/websocket"),
];

/// The platform's image in the manifests (compose tags it
/// `todo-platform:dev`, the Kubernetes manifests name it `todo-platform`
/// and kustomize rewrites it; Render builds the Dockerfile).
const IMAGE: &str = "todo-platform";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Upper-case string literals that look like environment variable names,
/// in the part of `source` before its first `#[cfg(test)]`. Comments and
/// character literals are skipped so that a quote in them does not shift
/// the scan.
fn env_like_literals(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let bytes = code.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                // '"', '\'' and '\u{..}' are character literals; 'a (a
                // lifetime) is not.
                if bytes.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < bytes.len() && bytes[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if bytes.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                let literal = &code[start..i.min(code.len())];
                if literal.len() >= 3
                    && literal.starts_with(|c: char| c.is_ascii_uppercase())
                    && literal
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    found.insert(literal.to_owned());
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    found
}

struct Binary {
    reads: BTreeSet<String>,
    has_database: bool,
    /// It reads `JwtSettings` (todo-api, todo-audit, todo-realtime).
    verifies_tokens: bool,
}

fn binaries() -> BTreeMap<&'static str, Binary> {
    let root = root();
    let mut shared = Vec::new();
    for entry in fs::read_dir(root.join("shared")).unwrap().flatten() {
        rust_files(&entry.path().join("src"), &mut shared);
    }
    let mut shared_common = BTreeSet::new();
    let mut shared_consumer = BTreeSet::new();
    let mut reads_rust_log = false;
    for file in &shared {
        let rel = file.strip_prefix(&root).unwrap();
        if rel.starts_with("shared/testing") {
            continue;
        }
        let source = fs::read_to_string(file).unwrap();
        reads_rust_log |= source.contains("EnvFilter::try_from_default_env")
            || source.contains("EnvFilter::from_default_env");
        let literals = env_like_literals(&source);
        if rel.starts_with("shared/consumer") {
            shared_consumer.extend(literals);
        } else {
            shared_common.extend(literals);
        }
    }
    assert!(
        shared_common.contains("JWT_SECRET") && shared_common.contains("DATABASE_URL"),
        "the scan of shared/*/src found no configuration variables: {shared_common:?}"
    );
    assert!(
        reads_rust_log,
        "shared/*/src no longer filters logs by RUST_LOG; update this test"
    );

    let mut out = BTreeMap::new();
    for &(binary, dir) in SERVICES {
        let crate_dir = root.join(dir);
        let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{dir}/Cargo.toml does not build {binary}; update SERVICES in this test"
        );
        let mut files = Vec::new();
        rust_files(&crate_dir.join("src"), &mut files);
        let mut reads = shared_common.clone();
        reads.insert("RUST_LOG".into());
        let mut uses_consumer_group = false;
        let mut has_database = false;
        let mut verifies_tokens = false;
        for file in &files {
            if file.file_name().is_some_and(|n| n == "testing.rs") {
                continue;
            }
            let source = fs::read_to_string(file).unwrap();
            let code = source.split("#[cfg(test)]").next().unwrap_or("");
            uses_consumer_group |= code.contains("ConsumerConfig");
            has_database |= code.contains("db::pool(") || code.contains("db::service_pool(");
            verifies_tokens |= code.contains("JwtSettings::from_env");
            reads.extend(env_like_literals(&source));
        }
        if uses_consumer_group {
            reads.extend(shared_consumer.iter().cloned());
        }
        out.insert(
            binary,
            Binary {
                reads,
                has_database,
                verifies_tokens,
            },
        );
    }
    out
}

/// One service as a manifest runs it: which binary, which variables.
#[derive(Debug)]
struct Deployed {
    manifest: String,
    binary: String,
    /// `migrate` for the one-shot migrator (`todo-api migrate`).
    subcommand: Option<String>,
    vars: BTreeSet<String>,
}

impl Deployed {
    /// `command` is the container's command: the binary, then its
    /// subcommand if any.
    fn new(manifest: String, command: &[String], vars: BTreeSet<String>) -> Deployed {
        Deployed {
            manifest,
            binary: command[0].clone(),
            subcommand: command.get(1).cloned(),
            vars,
        }
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of(v: &Value) -> Option<&str> {
    v.as_str()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn compose() -> Vec<Deployed> {
    let doc = yaml_docs(&root().join("docker-compose.yml")).remove(0);
    let mut out = Vec::new();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or("");
        if !image.starts_with(IMAGE) {
            continue;
        }
        let command = strings(&service["command"]);
        assert!(
            !command.is_empty(),
            "docker-compose.yml: {name} runs our image without a command"
        );
        let vars = match &service["environment"] {
            Value::Mapping(m) => m
                .keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(|i| i.as_str())
                .map(|i| i.split('=').next().unwrap().to_owned())
                .collect(),
            _ => BTreeSet::new(),
        };
        let manifest = format!("docker-compose.yml service {name}");
        out.push(Deployed::new(manifest, &command, vars));
    }
    out
}

fn render() -> Vec<Deployed> {
    let doc = yaml_docs(&root().join("deploy/render/render.yaml")).remove(0);
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(list) = doc["envVarGroups"].as_sequence() {
        for group in list {
            let keys = group["envVars"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| str_of(&v["key"]).map(str::to_owned))
                .collect();
            groups.insert(group["name"].as_str().unwrap().to_owned(), keys);
        }
    }
    let mut out = Vec::new();
    for service in doc["services"].as_sequence().expect("services") {
        let name = service["name"].as_str().unwrap();
        let command = strings(&service["dockerCommand"]);
        assert!(
            !command.is_empty(),
            "render.yaml: {name} has no dockerCommand"
        );
        let mut vars = BTreeSet::new();
        for v in service["envVars"].as_sequence().into_iter().flatten() {
            if let Some(key) = str_of(&v["key"]) {
                vars.insert(key.to_owned());
            } else if let Some(group) = str_of(&v["fromGroup"]) {
                let keys = groups
                    .get(group)
                    .unwrap_or_else(|| panic!("render.yaml: {name}: unknown group {group}"));
                vars.extend(keys.iter().cloned());
            }
        }
        let manifest = format!("render.yaml service {name}");
        out.push(Deployed::new(manifest, &command, vars));
    }
    out
}

fn civo() -> Vec<Deployed> {
    let mut files = Vec::new();
    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(path);
            }
        }
    }
    let dir = root().join("deploy/civo");
    yaml_files(&dir, &mut files);
    files.sort();
    let docs: Vec<(String, Value)> = files
        .iter()
        .flat_map(|f| {
            let rel = f.strip_prefix(root()).unwrap().display().to_string();
            yaml_docs(f).into_iter().map(move |d| (rel.clone(), d))
        })
        .collect();
    // ConfigMaps and Secrets by name; patches (redpanda-demo) add keys to
    // the same name.
    let mut keys: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (_, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        if kind == "ConfigMap" || kind == "Secret" {
            let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
            let entry = keys.entry((kind.to_owned(), name)).or_default();
            for field in ["data", "stringData"] {
                if let Some(m) = doc[field].as_mapping() {
                    entry.extend(m.keys().filter_map(|k| k.as_str().map(str::to_owned)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or("");
        if !matches!(kind, "Deployment" | "StatefulSet" | "Job" | "DaemonSet") {
            continue;
        }
        let name = doc["metadata"]["name"].as_str().unwrap();
        let containers = doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{file}: {kind} {name} has no containers"));
        for c in containers {
            if !c["image"].as_str().unwrap_or("").contains(IMAGE) {
                continue;
            }
            let command = strings(&c["command"]);
            assert!(
                !command.is_empty(),
                "{file}: {kind} {name} runs our image without a command"
            );
            let mut vars: BTreeSet<String> = c["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|e| str_of(&e["name"]).map(str::to_owned))
                .collect();
            for source in c["envFrom"].as_sequence().into_iter().flatten() {
                assert!(
                    source["prefix"].is_null(),
                    "{file}: {kind} {name}: envFrom prefix is not supported by this test"
                );
                for (field, ref_kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                    if let Some(ref_name) = str_of(&source[field]["name"]) {
                        let found = keys
                            .get(&(ref_kind.to_owned(), ref_name.to_owned()))
                            .unwrap_or_else(|| {
                                panic!("{file}: {kind} {name}: {ref_kind} {ref_name} is not under deploy/civo")
                            });
                        vars.extend(found.iter().cloned());
                    }
                }
            }
            let manifest = format!("{file} {kind} {name}");
            out.push(Deployed::new(manifest, &command, vars));
        }
    }
    out
}

#[test]
fn the_source_scan_finds_what_the_binaries_read() {
    let binaries = binaries();
    let api = &binaries["todo-api"];
    for var in [
        "DATABASE_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_DEBUG",
        "JWT_SECRET",
        "PORT",
        "RUST_LOG",
        "CORS_ALLOWED_ORIGINS",
        "OUTBOX_BATCH_SIZE",
    ] {
        assert!(api.reads.contains(var), "todo-api should read {var}");
    }
    assert!(
        !api.reads.contains("CONSUMER_BATCH_SIZE"),
        "todo-api has no consumer group"
    );
    assert!(
        !api.reads.contains("TEST_DATABASE_URL"),
        "the test harness is not the binary"
    );
    assert!(binaries["todo-audit"].reads.contains("CONSUMER_BATCH_SIZE"));
    assert!(binaries["todo-notifier"]
        .reads
        .contains("REMINDER_MAX_ATTEMPTS"));
    assert!(!binaries["todo-audit"]
        .reads
        .contains("REMINDER_MAX_ATTEMPTS"));
    for binary in ["todo-api", "todo-recurring", "todo-notifier", "todo-audit"] {
        assert!(binaries[binary].has_database, "{binary} has a database");
    }
    for binary in ["todo-api", "todo-audit", "todo-realtime"] {
        assert!(binaries[binary].verifies_tokens, "{binary} verifies tokens");
    }
    for binary in ["todo-recurring", "todo-notifier"] {
        assert!(
            !binaries[binary].verifies_tokens,
            "{binary} needs no secret"
        );
    }
    assert_eq!(
        env_like_literals(
            "let a = '\"'; f(\"NOT_IN_TEST\"); // \"COMMENT_VAR\"\n#[cfg(test)] g(\"TEST_ONLY\")"
        ),
        BTreeSet::from(["NOT_IN_TEST".to_owned()])
    );
}

#[test]
fn manifests_set_only_variables_their_binary_reads_and_every_required_one() {
    let binaries = binaries();
    let realtime_is_placeholder = {
        // Until todo-realtime lands, its crate is `fn main() {}`: its own
        // REALTIME_* variables cannot be checked yet.
        let dir = root().join("consumers/websocket/src");
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        files.len() == 1 && fs::read_to_string(&files[0]).unwrap().trim() == "fn main() {}"
    };
    let mut failures = Vec::new();
    let mut checked = 0;
    for (manifest, deployed) in [
        ("docker-compose.yml", compose()),
        ("render.yaml", render()),
        ("deploy/civo", civo()),
    ] {
        let mut seen = BTreeSet::new();
        for d in &deployed {
            let Some(binary) = binaries.get(d.binary.as_str()) else {
                failures.push(format!(
                    "{}: runs {:?}, which is no service binary",
                    d.manifest, d.binary
                ));
                continue;
            };
            seen.insert(d.binary.clone());
            checked += 1;
            for var in &d.vars {
                if realtime_is_placeholder
                    && d.binary == "todo-realtime"
                    && var.starts_with("REALTIME_")
                {
                    continue;
                }
                if !binary.reads.contains(var) {
                    failures.push(format!(
                        "{}: sets {var}, which {} never reads",
                        d.manifest, d.binary
                    ));
                }
            }
            // The migrator verifies no token.
            let verifies_tokens =
                binary.verifies_tokens && d.subcommand.as_deref() != Some("migrate");
            if verifies_tokens && !d.vars.contains("JWT_SECRET") {
                failures.push(format!(
                    "{}: JWT_SECRET is not set ({} refuses to start)",
                    d.manifest, d.binary
                ));
            }
            if !verifies_tokens {
                for var in d.vars.iter().filter(|v| v.starts_with("JWT_")) {
                    failures.push(format!(
                        "{}: sets {var}, but {} verifies no tokens (keep the secret where it is needed)",
                        d.manifest, d.binary
                    ));
                }
            }
            if binary.has_database && !d.vars.contains("DATABASE_URL") {
                failures.push(format!(
                    "{}: DATABASE_URL is not set ({} has a database)",
                    d.manifest, d.binary
                ));
            }
            if !binary.has_database {
                for var in d.vars.iter().filter(|v| v.starts_with("DATABASE_")) {
                    failures.push(format!(
                        "{}: sets {var}, but {} has no database",
                        d.manifest, d.binary
                    ));
                }
            }
            if d.vars.contains("KAFKA_SASL_USERNAME") != d.vars.contains("KAFKA_SASL_PASSWORD") {
                failures.push(format!(
                    "{}: sets only one of KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD",
                    d.manifest
                ));
            }
        }
        for &(binary, _) in SERVICES {
            if !seen.contains(binary) {
                failures.push(format!("{manifest}: does not run {binary}"));
            }
        }
    }
    assert!(
        checked >= 3 * SERVICES.len(),
        "found only {checked} deployed services"
    );
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
}
