use clap::Arg;

use super::values::variable;
use super::*;

fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_vars(BackendKind::Aws, |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned()))
}

fn refused(vars: &[(&str, &str)]) -> String {
    match settings(vars) {
        Ok(_) => panic!("{vars:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_setting_has_a_flag_and_the_variable_named_after_it() {
    let command = Settings::command(BackendKind::Embedded);
    let args: Vec<&Arg> = command.get_arguments().collect();
    assert_eq!(args.len(), 21, "a new setting: add it to the README's configuration table");
    for arg in args {
        let long = arg.get_long().unwrap_or_else(|| panic!("{} has no flag", arg.get_id()));
        let env = arg.get_env().and_then(OsStr::to_str);
        assert_eq!(env, Some(variable(long).as_str()), "--{long}");
        assert!(arg.is_global_set(), "--{long} is accepted after any subcommand");
    }
}

#[test]
fn defaults_depend_on_the_backend() {
    let aws = settings(&[]).unwrap();
    assert_eq!(aws.backend, BackendKind::Aws);
    assert!(!aws.loopback_providers_allowed());
    let embedded = Settings::from_vars(BackendKind::Embedded, |_| None).unwrap();
    assert_eq!(embedded.backend, BackendKind::Embedded);
    assert!(embedded.loopback_providers_allowed());
    assert_eq!(embedded.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
    assert_eq!(embedded.data_dir, PathBuf::from("./.latchkey"));
    assert_eq!(embedded.refresh_interval, Duration::from_secs(60));
    assert_eq!(embedded.refresh_lookahead, Duration::from_secs(600));
    assert_eq!(embedded.rt_warning, Duration::from_secs(7 * 86_400));
    assert_eq!(embedded.refresh_concurrency, 64);
    assert_eq!(embedded.service_options().refresh.concurrency, 64, "RefreshPolicy's default");
    assert_eq!(settings(&[("LATCHKEY_RT_WARNING_DAYS", "0.5")]).unwrap().rt_warning, Duration::from_secs(43_200));
    for bad in ["-1", "366", "soon", "NaN"] {
        assert!(settings(&[("LATCHKEY_RT_WARNING_DAYS", bad)]).is_err(), "{bad}");
    }
    assert_eq!(embedded.event_bus, "default");
    assert_eq!(embedded.log_format, LogFormat::Text);
    assert!(embedded.public_url.is_none() && embedded.jwt_secret.is_none() && embedded.table.is_none());
    let chosen = settings(&[("LATCHKEY_BACKEND", "embedded"), ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "0")]);
    let chosen = chosen.unwrap();
    assert_eq!(chosen.backend, BackendKind::Embedded);
    assert!(!chosen.loopback_providers_allowed());
}

#[test]
fn empty_and_blank_values_count_as_unset() {
    let names = Settings::command(BackendKind::Aws)
        .get_arguments()
        .filter_map(|a| a.get_env().and_then(OsStr::to_str).map(str::to_owned))
        .collect::<Vec<_>>();
    for blank in ["", "  "] {
        let vars: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), blank)).collect();
        let s = settings(&vars).unwrap_or_else(|e| panic!("{blank:?} everywhere: {e}"));
        assert_eq!(s.backend, BackendKind::Aws, "the default backend");
        assert_eq!(s.refresh_interval, Duration::from_secs(60));
        assert!(s.public_url.is_none() && s.jwt_secret.is_none() && s.jwt_audience.is_empty());
    }
}

#[test]
fn each_value_is_checked_with_a_message_naming_its_variable() {
    for (name, value, why) in [
        ("LATCHKEY_BACKEND", "gcp", "is not one of embedded, aws"),
        ("LATCHKEY_ADDR", "localhost", "is not host:port"),
        ("LATCHKEY_PUBLIC_URL", "http://example.com", "https"),
        ("LATCHKEY_REFRESH_INTERVAL_SECS", "0", "must be a positive integer"),
        ("LATCHKEY_REFRESH_LOOKAHEAD_SECS", "-1", "must be a non-negative integer"),
        ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "yes", "is not true or false"),
        ("LATCHKEY_LOOKUP_AUTH", "none", "is not one of iam, token"),
        ("LATCHKEY_LOG_FORMAT", "xml", "is not one of text, json"),
        ("LATCHKEY_CONNECT_FRAME_ANCESTORS", "https://app.example.com/path", "is neither an origin"),
        ("LATCHKEY_CONNECT_FRAME_ANCESTORS", "'none' 'self'", "cannot be combined"),
        ("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "5,soon", "comma-separated whole seconds"),
        ("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "5,,6", "comma-separated whole seconds"),
        ("LATCHKEY_REFRESH_CONCURRENCY", "0", "must be a whole number from 1 to 1024"),
        ("LATCHKEY_REFRESH_CONCURRENCY", "1025", "must be a whole number from 1 to 1024"),
        ("LATCHKEY_REFRESH_CONCURRENCY", "-1", "must be a whole number from 1 to 1024"),
        ("LATCHKEY_REFRESH_CONCURRENCY", "sixty", "must be a whole number from 1 to 1024"),
    ] {
        let message = refused(&[(name, value)]);
        assert!(message.starts_with(&format!("{name} is invalid: ")), "{message}");
        assert!(message.contains(why), "{message}");
    }
    let s = settings(&[
        ("LATCHKEY_PUBLIC_URL", "https://latchkey.example.com/"),
        ("LATCHKEY_REFRESH_LOOKAHEAD_SECS", "0"),
        ("LATCHKEY_ALLOW_LOOPBACK_PROVIDERS", "true"),
        ("LATCHKEY_ADDR", "0.0.0.0:0"),
    ])
    .unwrap();
    assert_eq!(s.public_url.as_deref(), Some("https://latchkey.example.com"));
    let options = s.service_options();
    assert_eq!(options.public_url.as_deref(), Some("https://latchkey.example.com"));
    assert!(options.allow_loopback_providers);
    assert_eq!(options.refresh.lookahead, Duration::ZERO);
    assert_eq!(options.connect_frame_ancestors, "'none'");
    assert!(!options.webhook_outbox, "aws: the EventBridge rule feeds webhook-deliver");
    assert_eq!(options.webhook_retry_schedule, crate::service::webhooks::default_retry_schedule());
    let scheduled = settings(&[("LATCHKEY_WEBHOOK_RETRY_SCHEDULE", "1, 1")]).unwrap().service_options();
    assert_eq!(scheduled.webhook_retry_schedule, [Duration::from_secs(1); 2]);
    for (value, concurrency) in [("1", 1), (" 8 ", 8), ("1024", 1_024)] {
        let options = settings(&[("LATCHKEY_REFRESH_CONCURRENCY", value)]).unwrap().service_options();
        assert_eq!(options.refresh.concurrency, concurrency, "{value:?} reaches the refresh policy");
    }
    let embedded = Settings::from_vars(BackendKind::Embedded, |_| None).unwrap();
    assert!(embedded.service_options().webhook_outbox);
    let framed = settings(&[("LATCHKEY_CONNECT_FRAME_ANCESTORS", " 'self'  https://app.example.com ")]).unwrap();
    assert_eq!(framed.service_options().connect_frame_ancestors, "'self' https://app.example.com");
}

#[test]
fn bearer_token_settings_are_checked_at_start() {
    let why = refused(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcde")]);
    assert!(why.contains("LATCHKEY_JWT_SECRET") && why.contains("at least 32 bytes"), "{why}");
    assert!(!why.contains("0123456789abcdef"), "the secret is not quoted: {why}");
    assert!(settings(&[("LATCHKEY_JWT_SECRET", "0123456789abcdef0123456789abcdef")]).is_ok());

    assert!(refused(&[("LATCHKEY_JWT_ISSUER", "https://idp.example.com/")]).contains("audience"));
    assert!(refused(&[("LATCHKEY_JWT_AUDIENCE", "api")]).contains("LATCHKEY_JWT_ISSUER"));
    let plain = [("LATCHKEY_JWT_ISSUER", "http://idp.example.com"), ("LATCHKEY_JWT_AUDIENCE", "api")];
    assert!(refused(&plain).contains("LATCHKEY_JWT_ISSUER"));
    let ok = settings(&[("LATCHKEY_JWT_ISSUER", " https://idp.example.com/ "), ("LATCHKEY_JWT_AUDIENCE", "a, b,")]);
    let ok = ok.unwrap();
    assert_eq!(ok.jwt_issuer.as_deref(), Some("https://idp.example.com/"));
    assert_eq!(ok.jwt_audience, ["a", "b"]);
    assert!(ok.verifier(None).unwrap().accepts_any());
    assert!(!settings(&[]).unwrap().verifier(None).unwrap().accepts_any(), "nothing configured: refuse all");

    assert_eq!(settings(&[]).unwrap().lookup_auth, LookupAuth::Iam);
    assert_eq!(settings(&[("LATCHKEY_LOOKUP_AUTH", "token")]).unwrap().lookup_auth, LookupAuth::Token);
}

#[test]
fn a_value_starting_with_a_dash_is_a_value() {
    let secret = "-0123456789abcdef0123456789abcdef";
    let s = settings(&[("LATCHKEY_JWT_SECRET", secret), ("LATCHKEY_TABLE", "--kms-key-id=x")]).unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(s.jwt_secret.as_ref().unwrap()), secret);
    assert_eq!(s.table.as_deref(), Some("--kms-key-id=x"));
    assert!(s.kms_key_id.is_none());
}
