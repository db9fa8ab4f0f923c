//! The container's command line: Kubernetes' command/args over the image's
//! Entrypoint/Cmd, and `$(VAR)` expansion.

use k8s_openapi::api::core::v1::Container;

use super::SpecError;

/// Expand `$(VAR)` references the way Kubernetes does: `$$` is an escaped `$` (so
/// `$$(VAR)` yields the literal `$(VAR)`), a reference `lookup` does not know is left as
/// written, and an unterminated `$(` is kept literally.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The argv a container runs, by Kubernetes' rules:
///
/// | pod sets            | runs                         |
/// |---------------------|------------------------------|
/// | command and args    | command + args               |
/// | command only        | command (image Cmd ignored)  |
/// | args only           | image Entrypoint + args      |
/// | neither             | image Entrypoint + image Cmd |
///
/// `$(VAR)` in the pod's command and args is expanded from `env` (the container's final
/// environment; the last definition of a name wins). The image's own values are not expanded.
pub fn effective_command(
    container: &Container,
    image_entrypoint: &[String],
    image_cmd: &[String],
    env: &[(String, String)],
) -> Result<Vec<String>, SpecError> {
    let (command, args) = expand_command(container, env);
    crate::planner::argv(&command, &args, image_entrypoint, image_cmd).ok_or_else(|| {
        SpecError::NoCommand {
            container: container.name.clone(),
        }
    })
}

/// The container's command and args with `$(VAR)` expanded from `env` (the last
/// definition of a name wins).
pub fn expand_command(
    container: &Container,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let expand_all =
        |v: &[String]| -> Vec<String> { v.iter().map(|s| expand(s, lookup)).collect() };
    (
        expand_all(container.command.as_deref().unwrap_or_default()),
        expand_all(container.args.as_deref().unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            name: "web".into(),
            command: command.map(s),
            args: args.map(s),
            ..Default::default()
        }
    }

    #[test]
    fn merge_rules_from_the_kubernetes_docs() {
        let ep = s(&["/ep-1"]);
        let cmd = s(&["foo", "bar"]);
        // (image Entrypoint, image Cmd, command, args) -> run
        type Case<'a> = (Option<&'a [&'a str]>, Option<&'a [&'a str]>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (None, None, vec!["/ep-1", "foo", "bar"]),
            (Some(&["/ep-2"]), None, vec!["/ep-2"]),
            (None, Some(&["zoo", "boo"]), vec!["/ep-1", "zoo", "boo"]),
            (
                Some(&["/ep-2"]),
                Some(&["zoo", "boo"]),
                vec!["/ep-2", "zoo", "boo"],
            ),
        ];
        for (command, args, want) in cases {
            let c = container(command, args);
            assert_eq!(
                effective_command(&c, &ep, &cmd, &[]).unwrap(),
                s(&want),
                "{command:?} {args:?}"
            );
        }
    }

    #[test]
    fn empty_lists_count_as_unset() {
        let c = container(Some(&[]), Some(&[]));
        assert_eq!(
            effective_command(&c, &s(&["/ep"]), &s(&["x"]), &[]).unwrap(),
            s(&["/ep", "x"])
        );
    }

    #[test]
    fn no_command_anywhere_is_an_error() {
        let c = container(None, None);
        let e = effective_command(&c, &[], &[], &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "web: no command: image has no Entrypoint/Cmd and the pod sets none"
        );
    }

    #[test]
    fn expansion_in_command_and_args() {
        let env = vec![
            ("GREETING".to_string(), "hello".to_string()),
            ("NAME".to_string(), "old".to_string()),
            ("NAME".to_string(), "world".to_string()),
        ];
        let c = container(
            Some(&["echo", "$(GREETING)"]),
            Some(&["$(NAME)", "$$(NAME)", "$(MISSING)", "$(GREETING)-$(NAME)"]),
        );
        assert_eq!(
            effective_command(&c, &[], &[], &env).unwrap(),
            s(&[
                "echo",
                "hello",
                "world",
                "$(NAME)",
                "$(MISSING)",
                "hello-world"
            ])
        );
        // Image values are taken verbatim.
        let c = container(None, None);
        assert_eq!(
            effective_command(&c, &s(&["$(GREETING)"]), &[], &env).unwrap(),
            s(&["$(GREETING)"])
        );
    }

    #[test]
    fn expand_table() {
        let lookup = |n: &str| match n {
            "A" => Some("a".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        for (input, want) in [
            ("$(A)", "a"),
            ("x$(A)y", "xay"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$a"),
            ("$$", "$"),
            ("$$$$", "$$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$A", "$A"),
            ("$(", "$("),
            ("$(A", "$(A"),
            ("$(B)", "$(B)"),
            ("$(EMPTY)", ""),
            ("$()", "$()"),
            ("$(A)$(A)", "aa"),
            ("no refs", "no refs"),
            ("ünï$(A)cödé", "ünïacödé"),
        ] {
            assert_eq!(expand(input, lookup), want, "{input}");
        }
    }
}
