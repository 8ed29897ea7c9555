//! IAM policy documents, typed: the roles in the template and the deployer policy share this shape.

use serde_json::{Map, Value, json};

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Grants the actions.
    Allow,
    /// Refuses the actions, whatever else grants them.
    Deny,
}

/// One statement of a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// A short identifier (letters and digits only) saying what the statement is for.
    pub sid: &'static str,
    /// Allow or deny.
    pub effect: Effect,
    /// The actions, e.g. `ssm:GetParameter`.
    pub actions: Vec<&'static str>,
    /// The resources (plain ARNs, or intrinsic functions inside a template).
    pub resources: Vec<Value>,
    /// A principal, for resource policies (bucket policies); `None` for identity policies.
    pub principal: Option<Value>,
    /// An IAM condition block, if any.
    pub condition: Option<Value>,
}

impl Statement {
    /// An `Allow` statement.
    pub fn allow(sid: &'static str, actions: &[&'static str], resources: Vec<Value>) -> Self {
        Statement {
            sid,
            effect: Effect::Allow,
            actions: actions.to_vec(),
            resources,
            principal: None,
            condition: None,
        }
    }

    /// Adds a condition block.
    pub fn when(mut self, condition: Value) -> Self {
        self.condition = Some(condition);
        self
    }

    fn to_json(&self) -> Value {
        let mut s = Map::new();
        s.insert("Sid".into(), json!(self.sid));
        s.insert(
            "Effect".into(),
            json!(match self.effect {
                Effect::Allow => "Allow",
                Effect::Deny => "Deny",
            }),
        );
        if let Some(p) = &self.principal {
            s.insert("Principal".into(), p.clone());
        }
        s.insert("Action".into(), json!(self.actions));
        s.insert("Resource".into(), Value::Array(self.resources.clone()));
        if let Some(c) = &self.condition {
            s.insert("Condition".into(), c.clone());
        }
        Value::Object(s)
    }
}

/// A policy document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyDocument {
    /// The statements, in order.
    pub statements: Vec<Statement>,
}

impl PolicyDocument {
    /// A document of `statements`.
    pub fn new(statements: Vec<Statement>) -> Self {
        PolicyDocument { statements }
    }

    /// The document as IAM JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": self.statements.iter().map(Statement::to_json).collect::<Vec<_>>(),
        })
    }

    /// Every action any statement allows.
    pub fn allowed_actions(&self) -> Vec<&'static str> {
        self.statements
            .iter()
            .filter(|s| s.effect == Effect::Allow)
            .flat_map(|s| s.actions.iter().copied())
            .collect()
    }
}

/// A trust policy letting `service` (e.g. `lambda.amazonaws.com`) assume a role.
pub fn service_trust(service: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": service },
            "Action": "sts:AssumeRole",
        }],
    })
}

/// A trust policy letting `service` assume a role only on behalf of the stack's own account (the
/// confused-deputy guard). Only for services documented to send `aws:SourceAccount` when they
/// assume the role (ECS for task roles); others would be locked out.
pub fn guarded_service_trust(service: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": service },
            "Action": "sts:AssumeRole",
            "Condition": { "StringEquals": { "aws:SourceAccount": { "Ref": "AWS::AccountId" } } },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_render_as_iam_json() {
        let doc = PolicyDocument::new(vec![
            Statement::allow("Read", &["ssm:GetParameter"], vec![json!("arn:x")])
                .when(json!({"Bool": {"aws:SecureTransport": "true"}})),
        ]);
        assert_eq!(
            doc.to_json(),
            json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "Read",
                    "Effect": "Allow",
                    "Action": ["ssm:GetParameter"],
                    "Resource": ["arn:x"],
                    "Condition": {"Bool": {"aws:SecureTransport": "true"}},
                }],
            })
        );
        assert_eq!(doc.allowed_actions(), ["ssm:GetParameter"]);
    }
}
