//! Pulling a snapshot: its members assembled (schema 2), or its one bundle layer streamed (schema 1); every
//! byte checked against what the manifest declares.

use super::*;

impl OciStore {
    /// A schema-2 snapshot: its members, those the local store holds reused, assembled into `dest`.
    pub(super) async fn get_members(
        &self,
        r: &Reference,
        name: &SnapshotName,
        index: BundleIndex,
        metadata: Vec<u8>,
        (dest, local): (&Path, &LocalMembers),
        progress: OnBytes<'_>,
    ) -> Result<Fetched, Error> {
        let source = OciMembers {
            store: self,
            r: r.clone(),
        };
        let integrity = |message: String| Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message,
        };
        let (actual, moved) = crate::members::assemble(&index, local, &source, dest, progress, &integrity).await?;
        if actual != index.sha256 {
            return Err(integrity(format!(
                "sha256 mismatch: manifest={}, downloaded={actual}",
                index.sha256
            )));
        }
        let sha = crate::Sha256::parse(&actual).ok_or_else(|| integrity("bad digest".into()))?;
        Ok(Fetched {
            sidecar: crate::Sidecar::new(sha, format!("{name}.tar.gz")).line(),
            metadata,
            sha256: actual,
            size: index.size,
            index: Some(index),
            moved,
        })
    }

    /// A schema-1 snapshot: its one layer streamed into `dest`, never past the size the manifest declares.
    pub(super) async fn get_layer(
        &self,
        r: &Reference,
        name: &SnapshotName,
        layer: &oci_client::manifest::OciDescriptor,
        metadata: Vec<u8>,
        dest: &Path,
        progress: OnBytes<'_>,
    ) -> Result<Fetched, Error> {
        let integrity = |message: String| Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message,
        };
        // The bundle's sha256 is its sidecar: other digest algorithms cannot name a bundle.
        let expected = layer
            .digest
            .starts_with("sha256:")
            .then(|| crate::Sha256::parse(&layer.digest))
            .flatten()
            .ok_or_else(|| {
                integrity(format!(
                    "the bundle layer's digest {:?} is not a sha256 digest",
                    layer.digest
                ))
            })?;
        let declared = u64::try_from(layer.size).unwrap_or(0);
        // oci-client's stream hashes what it yields and ends with an error unless it matches the layer digest.
        let mut stream = self
            .client
            .pull_blob_stream(r, layer)
            .await
            .map_err(|e| self.err("downloading the bundle", e))?
            .stream;
        let file = crate::local::create_private_file(dest)
            .map(tokio::fs::File::from_std)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // oci-client verifies the digest at the end of the stream and reports a mismatch as an
                // io::Error wrapping its DigestError.
                if e.get_ref()
                    .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
                {
                    integrity(e.to_string())
                } else {
                    Error::io("downloading the bundle", e)
                }
            })?;
            size += chunk.len() as u64;
            if size > declared {
                // Before the digest could say so: a registry must not fill the disk.
                return Err(integrity(format!(
                    "the registry sent more than the {declared} bytes the manifest declares"
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            progress(chunk.len() as u64);
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        if size != declared {
            return Err(integrity(format!(
                "{size} bytes downloaded, the manifest declares {declared}"
            )));
        }
        Ok(Fetched {
            sidecar: crate::Sidecar::new(expected.clone(), format!("{name}.tar.gz")).line(),
            metadata,
            sha256: expected.to_string(),
            size,
            index: None,
            moved: Moved {
                transferred: size,
                members_transferred: 1,
                ..Moved::default()
            },
        })
    }
}
