//! `deploy/k8s/`: the manifests parse (Python's yaml, as `kubectl` would read them) and hang
//! together, and the start script picks the node id and decides between bootstrapping and
//! joining as documented. Needs `python3` with `yaml` (Debian's python3-yaml) and `bash`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Reads every manifest the kustomization lists and checks that the pieces fit together.
const CHECK_MANIFESTS: &str = r#"
import os, sys, yaml
os.chdir(sys.argv[1])
kust = yaml.safe_load(open("kustomization.yaml"))
docs = []
for f in kust["resources"]:
    docs += [d for d in yaml.safe_load_all(open(f)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

(sts,) = by_kind["StatefulSet"]
spec = sts["spec"]
assert spec["replicas"] == 3, spec["replicas"]
assert spec["podManagementPolicy"] == "Parallel"
labels = spec["template"]["metadata"]["labels"]
assert spec["selector"]["matchLabels"].items() <= labels.items()
pod = spec["template"]["spec"]
(c,) = pod["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
    assert c[probe]["httpGet"]["port"] in ports, probe
assert spec["volumeClaimTemplates"][0]["metadata"]["name"] in [m["name"] for m in c["volumeMounts"]]
env = {e["name"]: e for e in c["env"]}
assert env["SLUICE_REPLICAS"]["value"] == str(spec["replicas"])
data_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
assert env["SLUICE_DATA_DIR"]["value"].startswith(data_mount + "/"), "the data dir must be below the mount (lost+found)"

# The start script comes from the generated ConfigMap, mounted where the command runs it.
(gen,) = kust["configMapGenerator"]
assert gen["files"] == ["start.sh"]
(vol,) = [v for v in pod["volumes"] if "configMap" in v]
assert vol["configMap"]["name"] == gen["name"]
mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == vol["name"])
assert c["command"][-1] == mount + "/start.sh", c["command"]

services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
headless = services[spec["serviceName"]]["spec"]
assert headless["clusterIP"] == "None"
assert headless["publishNotReadyAddresses"] is True
assert env["SLUICE_PEER_DOMAIN"]["value"].startswith(spec["serviceName"] + ".")
for s in services.values():
    assert s["spec"]["selector"].items() <= labels.items(), s["metadata"]["name"]
    for p in s["spec"]["ports"]:
        assert p["targetPort"] in ports, p

(pdb,) = by_kind["PodDisruptionBudget"]
assert pdb["spec"]["maxUnavailable"] == 1
assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
print("ok")
"#;

#[test]
fn the_manifests_parse_and_describe_three_nodes_probed_on_readyz_behind_a_headless_service() {
    let out = run(Command::new("python3")
        .arg("-c")
        .arg(CHECK_MANIFESTS)
        .arg(k8s_dir()));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// Runs start.sh as pod `pod` with `sluice` replaced by a stub that prints its arguments;
/// returns them.
fn start_args(pod: &str, data: &Path) -> String {
    start_args_with(pod, data, &[])
}

/// [`start_args`] with more environment variables.
fn start_args_with(pod: &str, data: &Path, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("sluice");
    std::fs::write(&stub, "#!/bin/sh\necho \"$@\"\n").unwrap();
    run(Command::new("chmod").arg("+x").arg(&stub));
    let out = run(Command::new("bash")
        .arg(k8s_dir().join("start.sh"))
        .env("HOSTNAME", pod)
        .env("SLUICE_BIN", &stub)
        // No such peers: names under .invalid never resolve.
        .env("SLUICE_PEER_DOMAIN", "peers.invalid")
        .env("SLUICE_REPLICAS", "3")
        .env("SLUICE_DATA_DIR", data)
        .env("SLUICE_BOOTSTRAP_PROBES", "1")
        .env("POD_IP", "10.0.0.7")
        .envs(env.iter().copied()));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pod_zero_with_no_cluster_state_and_no_ready_peer_bootstraps_as_node_one() {
    let data = tempfile::tempdir().unwrap();
    let args = start_args("sluice-0", &data.path().join("data"));
    assert!(args.starts_with("serve --node-id 1 "), "{args}");
    assert!(!args.contains("--join"), "{args}");
    assert!(args.contains("--listen 10.0.0.7:5680"), "{args}");
    assert!(
        args.contains("--cluster-advertise sluice-0.peers.invalid:25680"),
        "{args}"
    );
}

#[test]
fn pod_zero_with_cluster_state_joins_its_peers_instead_of_bootstrapping() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("cluster")).unwrap();
    let args = start_args("sluice-0", data.path());
    assert!(args.starts_with("serve --node-id 1 "), "{args}");
    assert!(
        args.ends_with("--join sluice-1.peers.invalid:25680,sluice-2.peers.invalid:25680"),
        "{args}"
    );
}

#[test]
fn other_pods_join_every_peer_by_its_dns_name_and_take_ordinal_plus_one_as_node_id() {
    let data = tempfile::tempdir().unwrap();
    let args = start_args("sluice-2", data.path());
    assert!(args.starts_with("serve --node-id 3 "), "{args}");
    assert!(
        args.ends_with("--join sluice-0.peers.invalid:25680,sluice-1.peers.invalid:25680"),
        "{args}"
    );
}

#[test]
fn a_new_volume_takes_the_id_offset_and_a_volume_keeps_the_id_its_node_recorded() {
    let data = tempfile::tempdir().unwrap();
    let offset = [("SLUICE_NODE_ID_OFFSET", "10")];
    let args = start_args_with("sluice-1", data.path(), &offset);
    assert!(args.starts_with("serve --node-id 12 "), "{args}");
    // A node refused under that id records nothing, and starts under the next offset.
    let args = start_args_with("sluice-1", data.path(), &[("SLUICE_NODE_ID_OFFSET", "20")]);
    assert!(args.starts_with("serve --node-id 22 "), "{args}");
    // One that was let in recorded its id (the broker does): it keeps it whatever the offset.
    std::fs::create_dir_all(data.path().join("cluster")).unwrap();
    std::fs::write(data.path().join("cluster/node-id"), "12\n").unwrap();
    let args = start_args_with("sluice-1", data.path(), &[("SLUICE_NODE_ID_OFFSET", "20")]);
    assert!(args.starts_with("serve --node-id 12 "), "{args}");
}
