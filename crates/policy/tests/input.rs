//! The input document: snapshot, schema, and agreement between the JSON form and the value
//! the proxy hands to regorus.

mod common;

use credproxy_policy::{input_schema, PolicyInput};

#[test]
fn input_document_snapshot() {
    insta::assert_json_snapshot!("representative_input", common::representative_input());
}

#[test]
fn unauthenticated_input_has_null_identity() {
    let mut input = common::representative_input();
    input.identity = None;
    input.credentials.clear();
    let json = serde_json::to_value(&input).expect("serialises");
    assert_eq!(json["identity"], serde_json::Value::Null);
    assert_eq!(json["credentials"], serde_json::json!([]));
}

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(input_schema()).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn schema_accepts_the_documents_this_crate_produces() {
    let validator = validator();
    let mut unauthenticated = common::representative_input();
    unauthenticated.identity = None;
    for input in [common::representative_input(), unauthenticated] {
        let doc = serde_json::to_value(&input).expect("serialises");
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

#[test]
fn schema_rejects_missing_extra_and_mistyped_fields() {
    let validator = validator();
    let good = serde_json::to_value(common::representative_input()).expect("serialises");

    let mut missing = good.clone();
    missing["request"]
        .as_object_mut()
        .expect("object")
        .remove("allowlisted");
    let mut extra = good.clone();
    extra["credentials"][0]["secret"] = "sk-live-123".into();
    let mut mistyped = good.clone();
    mistyped["request"]["port"] = "443".into();
    let mut wrong_version = good;
    wrong_version["version"] = 2.into();

    for doc in [missing, extra, mistyped, wrong_version] {
        assert!(!validator.is_valid(&doc), "accepted {doc}");
    }
}

#[test]
fn schema_file_in_docs_is_the_embedded_one() {
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/policy-input.schema.json"
    ))
    .expect("docs/policy-input.schema.json exists");
    assert_eq!(on_disk, input_schema());
}

#[test]
fn json_round_trip_and_unknown_fields() {
    let input = common::representative_input();
    let json = serde_json::to_string(&input).expect("serialises");
    let back: PolicyInput = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, input);

    let mut doc = serde_json::to_value(&input).expect("serialises");
    doc["request"]["query"] = "a=1".into();
    assert!(serde_json::from_value::<PolicyInput>(doc).is_err());
}

/// The proxy builds the regorus value directly; it must be the very document that
/// `credproxy policy input` prints and `policy eval` reads.
#[test]
fn direct_value_equals_the_json_document() {
    let mut unauthenticated = common::representative_input();
    unauthenticated.identity = None;
    unauthenticated.credentials.push(common::openai_unbound());
    for input in [common::representative_input(), unauthenticated] {
        let json = serde_json::to_string(&input).expect("serialises");
        let via_json = regorus::Value::from_json_str(&json).expect("parses");
        assert_eq!(input.to_value(), via_json);
    }
}
