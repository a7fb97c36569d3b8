//! `shopfast status`: the registry's view, as a table.
use clap::Args;

use kit_client::discovery::RegistryClient;
use registry_wire::wire::InstanceInfo;

#[derive(Args)]
pub struct StatusArgs {
    /// The registry to ask (`shopfast up` runs it on https://127.0.0.1:8080).
    #[arg(long, env = "SHOPFAST_REGISTRY_URL", default_value = "https://127.0.0.1:8080")]
    registry_url: String,
    /// Certificates to ask it with (the operator's, from `shopfast certs`; `shopfast up` keeps them in <data-dir>/tls).
    #[arg(long, env = "SHOPFAST_TLS_DIR", default_value = "data/tls")]
    tls_dir: std::path::PathBuf,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let tls = if args.registry_url.starts_with("https://") {
        let config = kit_tls::TlsConfig::in_dir(&args.tls_dir);
        kit_tls::Tls::optional(&config, kit_tls::OPERATOR).map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        None
    };
    let client = RegistryClient::with_tls(&args.registry_url, tls);
    let list = client.all_instances().await.map_err(|e| anyhow::anyhow!("cannot read the registry: {e}"))?;
    print!("{}", table(&list.instances, |_| String::new()));
    let policies = client.policies().await.map_err(|e| anyhow::anyhow!("cannot read the registry: {e}"))?;
    print!("{}", policy_lines(&policies));
    Ok(())
}

/// Traffic policies, a line each: `products: v1=0 v2=100 sticky=user (index 57 by deployer: why)`.
pub fn policy_lines(policies: &[registry_wire::traffic::TrafficPolicy]) -> String {
    let mut out = String::new();
    if !policies.is_empty() {
        out += "\nTRAFFIC POLICIES\n";
    }
    for policy in policies {
        let weights: Vec<String> = policy.weights.iter().map(|(v, w)| format!("{v}={w}%")).collect();
        let sticky = format!("{:?}", policy.sticky).to_lowercase();
        let mut line = format!(
            "{}: {} sticky={sticky} (index {} by {}",
            policy.service,
            weights.join(" "),
            policy.index,
            policy.updated_by
        );
        if !policy.reason.is_empty() {
            line += &format!(": {}", policy.reason);
        }
        out += &format!("{line})\n");
    }
    out
}

/// Instances as an aligned table, sorted by service then id; `extra` adds a
/// last column (e.g. the log file).
pub fn table(instances: &[InstanceInfo], extra: impl Fn(&InstanceInfo) -> String) -> String {
    let mut rows: Vec<[String; 8]> = instances
        .iter()
        .map(|i| {
            let meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                i.name.clone(),
                i.version.clone(),
                i.track.clone(),
                i.address.clone(),
                i.admin_address.clone(),
                format!("{:?}", i.health).to_lowercase(),
                meta.join(","),
                extra(i),
            ]
        })
        .collect();
    rows.sort();
    let header = ["SERVICE", "VERSION", "TRACK", "ADDRESS", "ADMIN", "HEALTH", "METADATA", ""];
    let widths: Vec<usize> =
        (0..8).map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&header);
    for row in &rows {
        out += &line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if rows.is_empty() {
        out += "(no instances registered)\n";
    }
    out
}
