//! A connection's values against its definition: types, visibility, required inputs,
//! defaults and the total bound.

use super::*;

/// A connection's values split into the plain ones and the secrets.
#[derive(Default, Clone)]
pub struct Values {
    pub plain: BTreeMap<String, Value>,
    pub secret: BTreeMap<String, SecretString>,
}

impl Values {
    fn has(&self, name: &str) -> bool {
        self.plain.contains_key(name) || self.secret.contains_key(name)
    }

    fn remove(&mut self, name: &str) {
        self.plain.remove(name);
        self.secret.remove(name);
    }

    pub fn secret_names(&self) -> BTreeSet<String> {
        self.secret.keys().cloned().collect()
    }

    /// Moves plain values of inputs that are `password` now (the definition changed since they
    /// were stored) into the secrets. Returns whether anything moved.
    pub fn seal_secret_inputs(&mut self, inputs: &IndexMap<String, Input>) -> bool {
        let moved: Vec<String> =
            self.plain.keys().filter(|k| inputs.get(*k).is_some_and(|i| i.kind.is_secret())).cloned().collect();
        for name in &moved {
            if let Some(v) = self.plain.remove(name) {
                let s = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                self.secret.insert(name.clone(), SecretString::from(s));
            }
        }
        !moved.is_empty()
    }
}

/// Who is setting values: a customer may only set `customer` and `embedded` inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setter {
    Organization,
    Customer,
}

/// Applies `changes` (a JSON object; `null` resets an input to its default) on top of `base`,
/// and checks the result against the definition's inputs: types, unknown keys, visibility,
/// required. `defaults` are the definition's defaults (plain and unsealed secret ones);
/// `inherited` names the inputs read from the definition at each use rather than copied
/// ([`super::Definition::by_reference`]): `null` removes the connection's own value, and the
/// definition's default satisfies `required`.
pub fn apply_values(
    inputs: &IndexMap<String, Input>,
    defaults: &Values,
    inherited: &BTreeSet<String>,
    mut base: Values,
    changes: &Value,
    setter: Setter,
) -> Result<Values, Vec<FieldError>> {
    let mut errors = Vec::new();
    let changes = match changes {
        Value::Null => &Map::new(),
        Value::Object(m) => m,
        _ => return Err(vec![FieldError::new("values", "must be an object")]),
    };
    // Values of inputs the definition no longer has are dropped.
    base.plain.retain(|k, _| inputs.contains_key(k));
    base.secret.retain(|k, _| inputs.contains_key(k));
    base.seal_secret_inputs(inputs);

    for (name, v) in changes {
        let field = format!("values.{name}");
        let Some(input) =
            inputs.get(name).filter(|i| setter == Setter::Organization || i.visibility.customer_can_set())
        else {
            // A customer learns nothing of organization inputs: they are simply unknown.
            errors.push(FieldError::new(field, "unknown input"));
            continue;
        };
        base.remove(name);
        if v.is_null() && inherited.contains(name) {
            continue;
        }
        if v.is_null() {
            if let Some(d) = defaults.plain.get(name) {
                base.plain.insert(name.clone(), d.clone());
            }
            if let Some(d) = defaults.secret.get(name) {
                base.secret.insert(name.clone(), d.clone());
            }
            continue;
        }
        if let Err(msg) = check_type(input.kind, v).and_then(|()| check_special_input(name, v)) {
            errors.push(FieldError::new(field, msg.to_string()));
            continue;
        }
        if input.kind.is_secret() {
            let s = v.as_str().unwrap_or_default();
            if !s.is_empty() {
                base.secret.insert(name.clone(), SecretString::from(s.to_owned()));
            }
        } else if v.as_str() != Some("") {
            base.plain.insert(name.clone(), v.clone());
        }
    }
    let mut incomplete = false;
    for (name, input) in inputs {
        let from_definition = inherited.contains(name) && defaults.has(name);
        if input.required
            && !base.has(name)
            && !from_definition
            && !errors.iter().any(|e| e.field == format!("values.{name}"))
        {
            if setter == Setter::Customer && !input.visibility.customer_can_set() {
                // A customer can neither set nor learn of organization inputs.
                incomplete = true;
            } else {
                errors.push(FieldError::new(format!("values.{name}"), "is required"));
            }
        }
    }
    if incomplete {
        errors.push(FieldError::new(
            "values",
            "the definition lacks values only the organization can set; ask the organization to complete it",
        ));
    }
    let total = base.plain.iter().map(|(k, v)| k.len() + v.to_string().len()).sum::<usize>()
        + base.secret.iter().map(|(k, v)| k.len() + v.expose_secret().len()).sum::<usize>();
    if total > MAX_VALUES_BYTES {
        errors.push(FieldError::new(
            "values",
            format!("the connection's values total {total} bytes; at most {MAX_VALUES_BYTES} are kept"),
        ));
    }
    if errors.is_empty() { Ok(base) } else { Err(errors) }
}
