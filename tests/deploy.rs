//! The deployment files: the config the Kubernetes ConfigMap carries passes `check-config`, the
//! Deployment runs the proxy on the file where the ConfigMap is mounted, the Dockerfile's
//! command matches it, and the manifests build with `kubectl kustomize` where kubectl exists.

use crate::support::process::run;

/// The TOML text under `esi-proxy.toml: |` in `deploy/kubernetes/configmap.yaml`.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string("deploy/kubernetes/configmap.yaml").expect("configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "esi-proxy.toml: |");
    assert!(lines.next().is_some(), "the ConfigMap holds esi-proxy.toml");
    let mut text = String::new();
    for line in lines {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        text.push_str(line.strip_prefix("    ").unwrap_or(""));
        text.push('\n');
    }
    assert!(text.contains("[server]"), "{text}");
    text
}

#[tokio::test]
async fn the_configmaps_config_passes_check_config() {
    let dir = std::env::temp_dir().join(format!("esi-proxy-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("esi-proxy.toml");
    std::fs::write(&path, configmap_toml()).expect("written");
    let out = run(&["check-config", path.to_str().expect("UTF-8")]).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_deployment_and_the_image_run_the_mounted_config() {
    let deployment =
        std::fs::read_to_string("deploy/kubernetes/deployment.yaml").expect("deployment.yaml");
    let dockerfile = std::fs::read_to_string("Dockerfile").expect("Dockerfile");
    let args =
        r#"["serve", "--config", "/etc/esi-proxy/esi-proxy.toml", "--listen", "0.0.0.0:8080"]"#;
    assert!(
        deployment.contains(&format!("args: {args}")),
        "{deployment}"
    );
    assert!(dockerfile.contains(&format!("CMD {args}")), "{dockerfile}");
    assert!(
        deployment.contains("mountPath: /etc/esi-proxy\n"),
        "mounted as a directory"
    );
    assert!(
        !deployment.contains("subPath"),
        "a subPath mount is never updated in place"
    );
    assert!(
        dockerfile.contains("--no-default-features"),
        "the image is the production build, without the demo"
    );
}

#[tokio::test]
async fn the_manifests_build_with_kustomize() {
    let Ok(out) = std::process::Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .output()
    else {
        eprintln!("kubectl is not installed: the manifests were not built");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "kind: ConfigMap",
        "kind: Deployment",
        "kind: Service",
        "kind: HorizontalPodAutoscaler",
        "kind: StatefulSet",
    ] {
        assert!(text.contains(kind), "{kind} in {text}");
    }
}
