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
        run_baa(
            &self.bin,
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--name",
                name,
                "--san",
                host,
            ],
        )
        .await
        .assert_success("baa pki issue (site)");
        client::identity_pem(
            &pki.join(format!("{name}.pem")),
            &pki.join(format!("{name}.key")),
        )
    }

    /// Issues a node certificate for node `id` (which need not be a member);
    /// returns its cluster identity as one PEM.
    pub async fn issue_node_identity(&self, id: NodeId) -> Vec<u8> {
        let pki = self.pki_dir();
        run_baa(
            &self.bin,
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--node",
                &id.to_string(),
            ],
        )
        .await
        .assert_success("baa pki issue (node)");
        self.node_identity_pem(id)
    }
}
