//! Certificates the tests need besides the nodes' own: node and cluster
//! identities as PEM, and server identities for partner sites.

use super::*;

impl Cluster {
    /// The node's cluster certificate and key as one PEM (its identity on the cluster port).
    pub fn node_identity_pem(&self, id: NodeId) -> Vec<u8> {
        let pki = self.pki_dir();
        client::identity_pem(
            &pki.join(format!("node{id}-cluster.pem")),
            &pki.join(format!("node{id}-cluster.key")),
        )
    }

    /// The CA that signs the certificates of the cluster port (nodes only).
    pub fn cluster_ca_pem(&self) -> PathBuf {
        self.pki_dir().join("cluster-ca.pem")
    }

    /// Issues a certificate for partner site `name` at `host`, as the demo does;
    /// returns it with its key as one PEM.
    pub async fn issue_site_identity(&self, name: &str, host: &str) -> Vec<u8> {
        let pki = self.pki_dir();
        self.pki_issue(&["--name", name, "--san", host]).await;
        client::identity_pem(
            &pki.join(format!("{name}.pem")),
            &pki.join(format!("{name}.key")),
        )
    }

    /// Issues a node certificate for node `id` (which need not be a member);
    /// returns its cluster identity as one PEM.
    pub async fn issue_node_identity(&self, id: NodeId) -> Vec<u8> {
        self.pki_issue(&["--node", &id.to_string()]).await;
        self.node_identity_pem(id)
    }

    /// `baa pki issue --dir <the cluster's PKI> <args>`, which must succeed.
    pub(super) async fn pki_issue(&self, args: &[&str]) {
        let pki = self.pki_dir();
        let mut argv = vec!["pki", "issue", "--dir", path_str(&pki)];
        argv.extend_from_slice(args);
        run_baa(&self.bin, &argv)
            .await
            .assert_success(&format!("baa pki issue {}", args.join(" ")));
    }
}
