//! A small typed model of a CloudFormation template: resources, parameters, conditions and outputs,
//! intrinsic functions, checkov suppressions, and a deterministic JSON rendering.
//!
//! Resource properties stay JSON (`serde_json::Value`) because CloudFormation's property schemas are
//! large and flotilla uses a small corner of each; what must not drift is typed instead: logical ids
//! are constants checked by [`Template::dangling_references`], every checkov suppression carries a
//! written reason, and the rendering sorts every key so the same options always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// The template format version CloudFormation expects.
pub const FORMAT_VERSION: &str = "2010-09-09";

/// The largest template body `CreateStack`/`UpdateStack` accept inline, in bytes; larger ones must
/// be uploaded to S3 first. Send [`Template::to_compact_string`], which is well below it.
pub const TEMPLATE_BODY_MAX_BYTES: usize = 51_200;

/// A checkov check suppressed on one resource, with the reason it does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckovSkip {
    /// The checkov check id, e.g. `CKV_AWS_91`.
    pub id: &'static str,
    /// Why the check does not apply here, in a full sentence.
    pub comment: &'static str,
}

/// One resource of a template.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The CloudFormation type, e.g. `AWS::EC2::VPC`.
    pub kind: &'static str,
    /// The properties, as CloudFormation expects them.
    pub properties: Value,
    /// Logical ids this resource must be created after (beyond those its properties reference).
    pub depends_on: Vec<&'static str>,
    /// The condition that decides whether the resource exists, if any.
    pub condition: Option<&'static str>,
    /// Checkov checks suppressed on this resource, each with its reason.
    pub checkov_skips: Vec<CheckovSkip>,
    /// What happens to the resource when the stack is deleted (`Delete` when `None`).
    pub deletion_policy: Option<&'static str>,
}

impl Resource {
    /// A resource of `kind` with `properties`.
    pub fn new(kind: &'static str, properties: Value) -> Self {
        Resource {
            kind,
            properties,
            depends_on: Vec::new(),
            condition: None,
            checkov_skips: Vec::new(),
            deletion_policy: None,
        }
    }

    /// Adds explicit dependencies.
    pub fn depends_on(mut self, ids: &[&'static str]) -> Self {
        self.depends_on.extend_from_slice(ids);
        self
    }

    /// Makes the resource exist only when `condition` holds.
    pub fn when(mut self, condition: &'static str) -> Self {
        self.condition = Some(condition);
        self
    }

    /// Suppresses checkov check `id` on this resource, for the reason given.
    pub fn skip_checkov(mut self, id: &'static str, comment: &'static str) -> Self {
        self.checkov_skips.push(CheckovSkip { id, comment });
        self
    }

    /// Sets the deletion policy (and the matching update-replace policy).
    pub fn deletion_policy(mut self, policy: &'static str) -> Self {
        self.deletion_policy = Some(policy);
        self
    }

    fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("Type".into(), json!(self.kind));
        if !self.properties.is_null() {
            out.insert("Properties".into(), self.properties.clone());
        }
        if !self.depends_on.is_empty() {
            out.insert("DependsOn".into(), json!(self.depends_on));
        }
        if let Some(condition) = self.condition {
            out.insert("Condition".into(), json!(condition));
        }
        if let Some(policy) = self.deletion_policy {
            out.insert("DeletionPolicy".into(), json!(policy));
            out.insert("UpdateReplacePolicy".into(), json!(policy));
        }
        if !self.checkov_skips.is_empty() {
            let skips: Vec<Value> = self
                .checkov_skips
                .iter()
                .map(|s| json!({"id": s.id, "comment": s.comment}))
                .collect();
            out.insert("Metadata".into(), json!({"checkov": {"skip": skips}}));
        }
        Value::Object(out)
    }
}

/// A template parameter (always a `String` here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    /// What the parameter is for.
    pub description: &'static str,
    /// Its value when the caller gives none.
    pub default: &'static str,
}

/// A stack output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// What the output holds.
    pub description: String,
    /// Its value (usually an intrinsic function).
    pub value: Value,
    /// The condition under which it exists, if any.
    pub condition: Option<&'static str>,
}

/// A whole CloudFormation template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Template {
    /// The stack description shown in the console.
    pub description: String,
    /// Template-level metadata.
    pub metadata: BTreeMap<String, Value>,
    /// Parameters by name.
    pub parameters: BTreeMap<&'static str, Parameter>,
    /// Conditions by name.
    pub conditions: BTreeMap<&'static str, Value>,
    /// Resources by logical id.
    pub resources: BTreeMap<&'static str, Resource>,
    /// Outputs by name.
    pub outputs: BTreeMap<&'static str, Output>,
}

impl Template {
    /// Adds a resource under `id`.
    ///
    /// Panics if `id` is already taken: logical ids are compile-time constants, so a clash is a
    /// programming error that every test would reveal.
    pub fn add(&mut self, id: &'static str, resource: Resource) {
        let previous = self.resources.insert(id, resource);
        assert!(previous.is_none(), "logical id {id} used twice");
    }

    /// Adds an output.
    pub fn output(&mut self, name: &'static str, description: impl Into<String>, value: Value) {
        self.outputs.insert(
            name,
            Output {
                description: description.into(),
                value,
                condition: None,
            },
        );
    }

    /// Adds an output that exists only when `condition` holds.
    pub fn output_when(
        &mut self,
        name: &'static str,
        condition: &'static str,
        description: impl Into<String>,
        value: Value,
    ) {
        self.outputs.insert(
            name,
            Output {
                description: description.into(),
                value,
                condition: Some(condition),
            },
        );
    }

    /// The template as JSON with every object's keys sorted, so that equal templates render to equal
    /// bytes whatever order they were built in (and whichever `serde_json` map features are on).
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        root.insert("AWSTemplateFormatVersion".into(), json!(FORMAT_VERSION));
        root.insert("Description".into(), json!(self.description));
        if !self.metadata.is_empty() {
            root.insert("Metadata".into(), json!(self.metadata));
        }
        if !self.parameters.is_empty() {
            let params: Map<String, Value> = self
                .parameters
                .iter()
                .map(|(name, p)| {
                    let body = json!({
                        "Type": "String",
                        "Description": p.description,
                        "Default": p.default,
                    });
                    ((*name).to_owned(), body)
                })
                .collect();
            root.insert("Parameters".into(), Value::Object(params));
        }
        if !self.conditions.is_empty() {
            root.insert("Conditions".into(), json!(self.conditions));
        }
        let resources: Map<String, Value> = self
            .resources
            .iter()
            .map(|(id, r)| ((*id).to_owned(), r.to_json()))
            .collect();
        root.insert("Resources".into(), Value::Object(resources));
        if !self.outputs.is_empty() {
            let outputs: Map<String, Value> = self
                .outputs
                .iter()
                .map(|(name, o)| {
                    let mut body = Map::new();
                    body.insert("Description".into(), json!(o.description));
                    body.insert("Value".into(), o.value.clone());
                    if let Some(c) = o.condition {
                        body.insert("Condition".into(), json!(c));
                    }
                    ((*name).to_owned(), Value::Object(body))
                })
                .collect();
            root.insert("Outputs".into(), Value::Object(outputs));
        }
        canonical(Value::Object(root))
    }

    /// The template as indented JSON, for people (`flotilla baseline template`).
    pub fn to_pretty_string(&self) -> String {
        let mut s =
            serde_json::to_string_pretty(&self.to_json()).expect("a JSON value always serialises");
        s.push('\n');
        s
    }

    /// The template as compact JSON, for the CloudFormation API (smaller than the pretty form).
    pub fn to_compact_string(&self) -> String {
        serde_json::to_string(&self.to_json()).expect("a JSON value always serialises")
    }

    /// Every `Ref`, `Fn::GetAtt`, `Fn::Sub` variable, `DependsOn` and `Condition` that names
    /// something the template does not define, as `(where, name)` pairs. Empty for a sound template.
    pub fn dangling_references(&self) -> Vec<(String, String)> {
        let mut known: BTreeSet<String> = self.resources.keys().map(|k| (*k).to_owned()).collect();
        known.extend(self.parameters.keys().map(|k| (*k).to_owned()));
        let conditions: BTreeSet<&str> = self.conditions.keys().copied().collect();
        let mut problems = Vec::new();
        let check_value = |place: String, value: &Value, problems: &mut Vec<(String, String)>| {
            let mut refs = Vec::new();
            collect_references(value, &mut refs);
            for r in refs {
                let ok = r.starts_with("AWS::") || known.contains(&r);
                if !ok {
                    problems.push((place.clone(), r));
                }
            }
        };
        for (id, r) in &self.resources {
            check_value(format!("resource {id}"), &r.properties, &mut problems);
            for dep in &r.depends_on {
                if !self.resources.contains_key(dep) {
                    problems.push((format!("resource {id} DependsOn"), (*dep).to_owned()));
                }
            }
            if let Some(c) = r.condition
                && !conditions.contains(c)
            {
                problems.push((format!("resource {id} Condition"), c.to_owned()));
            }
        }
        for (name, o) in &self.outputs {
            check_value(format!("output {name}"), &o.value, &mut problems);
            if let Some(c) = o.condition
                && !conditions.contains(c)
            {
                problems.push((format!("output {name} Condition"), c.to_owned()));
            }
        }
        for (name, c) in &self.conditions {
            check_value(format!("condition {name}"), c, &mut problems);
        }
        problems
    }
}

/// Collects the names a value refers to through `Ref`, `Fn::GetAtt` and `Fn::Sub` variables.
fn collect_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(name)) = map.get("Ref") {
                out.push(name.clone());
            }
            if let Some(Value::Array(parts)) = map.get("Fn::GetAtt")
                && let Some(Value::String(id)) = parts.first()
            {
                out.push(id.clone());
            }
            match map.get("Fn::Sub") {
                Some(Value::String(s)) => out.extend(sub_variables(s)),
                Some(Value::Array(parts)) => {
                    // The second element defines local variables; those are not dangling.
                    if let Some(Value::String(s)) = parts.first() {
                        let locals: BTreeSet<String> = parts
                            .get(1)
                            .and_then(Value::as_object)
                            .map(|m| m.keys().cloned().collect())
                            .unwrap_or_default();
                        out.extend(sub_variables(s).into_iter().filter(|v| !locals.contains(v)));
                    }
                }
                _ => {}
            }
            for v in map.values() {
                collect_references(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_references(v, out);
            }
        }
        _ => {}
    }
}

/// The logical ids named by `${...}` variables in a `Fn::Sub` string (`${X.Attr}` names `X`;
/// `${!Literal}` is an escape, not a variable).
fn sub_variables(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let var = &after[..end];
        if !var.starts_with('!') {
            let id = var.split('.').next().unwrap_or(var);
            out.push(id.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// `value` as compact JSON text with every object's keys sorted, for properties CloudFormation
/// takes as a JSON string (dashboard bodies, ECR lifecycle policies).
pub fn json_text(value: &Value) -> String {
    serde_json::to_string(&canonical(value.clone())).expect("a JSON value always serialises")
}

/// Rebuilds `value` with every object's keys in sorted order.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = Map::new();
            for (k, v) in sorted {
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// `{"Ref": id}`.
pub fn reference(id: &str) -> Value {
    json!({ "Ref": id })
}

/// `{"Fn::GetAtt": [id, attribute]}`.
pub fn get_att(id: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [id, attribute] })
}

/// `{"Fn::Sub": template}`.
pub fn sub(template: impl Into<String>) -> Value {
    json!({ "Fn::Sub": template.into() })
}

/// `{"Fn::Select": [index, list]}`.
pub fn select(index: usize, list: Value) -> Value {
    json!({ "Fn::Select": [index.to_string(), list] })
}

/// `{"Fn::Join": [separator, items]}`.
pub fn join(separator: &str, items: Vec<Value>) -> Value {
    json!({ "Fn::Join": [separator, items] })
}

/// `{"Fn::If": [condition, then, else]}`.
pub fn if_(condition: &str, then: Value, otherwise: Value) -> Value {
    json!({ "Fn::If": [condition, then, otherwise] })
}

/// The `AWS::NoValue` pseudo parameter: drops the property it is assigned to.
pub fn no_value() -> Value {
    reference("AWS::NoValue")
}

/// The availability zone at `index` of the stack's region.
pub fn az(index: usize) -> Value {
    select(index, json!({ "Fn::GetAZs": "" }))
}

/// Resource tags in CloudFormation's list form, sorted by key.
pub fn tags(pairs: &[(&str, Value)]) -> Value {
    let mut sorted: Vec<&(&str, Value)> = pairs.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    Value::Array(
        sorted
            .into_iter()
            .map(|(k, v)| json!({ "Key": k, "Value": v }))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_variables_ignore_escapes_and_attributes() {
        let check = |s: &str, want: &[&str]| assert_eq!(sub_variables(s), want, "{s}");
        check("plain", &[]);
        check("${A}", &["A"]);
        check("x${A.Arn}y${AWS::Region}", &["A", "AWS::Region"]);
        check("${!Literal}${B}", &["B"]);
        check("${unterminated", &[]);
    }

    #[test]
    fn dangling_references_name_what_is_missing() {
        let mut t = Template::default();
        t.add(
            "A",
            Resource::new("AWS::S3::Bucket", json!({"X": reference("B")})),
        );
        t.add(
            "C",
            Resource::new("AWS::S3::Bucket", json!({"Y": sub("${A.Arn}-${Nope}")}))
                .depends_on(&["Missing"])
                .when("NoSuchCondition"),
        );
        t.output("O", "o", get_att("Gone", "Arn"));
        let got = t.dangling_references();
        let want = vec![
            ("resource A".to_owned(), "B".to_owned()),
            ("resource C".to_owned(), "Nope".to_owned()),
            ("resource C DependsOn".to_owned(), "Missing".to_owned()),
            (
                "resource C Condition".to_owned(),
                "NoSuchCondition".to_owned(),
            ),
            ("output O".to_owned(), "Gone".to_owned()),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn sub_locals_are_not_dangling() {
        let mut t = Template::default();
        let v = json!({"Fn::Sub": ["${Local}", {"Local": "x"}]});
        t.add("A", Resource::new("AWS::S3::Bucket", json!({ "X": v })));
        assert!(t.dangling_references().is_empty());
    }

    #[test]
    fn rendering_sorts_keys_and_carries_checkov_reasons() {
        let mut t = Template {
            description: "d".into(),
            ..Template::default()
        };
        t.add(
            "B",
            Resource::new("AWS::S3::Bucket", json!({"Zeta": 1, "Alpha": 2}))
                .skip_checkov("CKV_AWS_18", "No logs needed."),
        );
        let text = t.to_compact_string();
        assert_eq!(
            text,
            r#"{"AWSTemplateFormatVersion":"2010-09-09","Description":"d","Resources":{"B":{"Metadata":{"checkov":{"skip":[{"comment":"No logs needed.","id":"CKV_AWS_18"}]}},"Properties":{"Alpha":2,"Zeta":1},"Type":"AWS::S3::Bucket"}}}"#
        );
    }

    #[test]
    #[should_panic(expected = "logical id A used twice")]
    fn duplicate_logical_ids_are_a_bug() {
        let mut t = Template::default();
        t.add("A", Resource::new("AWS::S3::Bucket", Value::Null));
        t.add("A", Resource::new("AWS::S3::Bucket", Value::Null));
    }
}
