//! The desired sources behind one trait: a git branch ([`GitSource`]) or a plain file
//! ([`FileSource`]), and [`AnySource`], the one chosen at start-up. Every command and the
//! daemon read `users.yaml` through it, so that they see the same revisions.

use std::future::Future;
use std::path::PathBuf;

use chrono::Utc;

use super::{GitSource, Revision, SourceError, content_hash, read_file};

/// Where the desired state comes from.
pub trait DesiredSource: Send + Sync {
    /// The newest revision and the bytes of `users.yaml` at it.
    fn load(&self) -> impl Future<Output = Result<(Revision, Vec<u8>), SourceError>> + Send;

    /// For logs, e.g. `https://github.com/contoso/admins.git#main:users.yaml`.
    fn describe(&self) -> String;

    /// The branch followed, for a git source.
    fn branch(&self) -> Option<String> {
        None
    }
}

impl DesiredSource for GitSource {
    async fn load(&self) -> Result<(Revision, Vec<u8>), SourceError> {
        let revision = self.fetch().await?;
        // A refused commit is never read: nothing of it reaches the parser.
        if let Some(signer) = self.verify(&revision, Utc::now()).await? {
            tracing::debug!(revision = %revision.short, signer = %signer, "signature verified");
        }
        let bytes = self.read(&revision).await?;
        Ok((revision, bytes))
    }

    fn describe(&self) -> String {
        let settings = self.settings();
        format!(
            "{}#{}:{}",
            settings.display_repo(),
            settings.branch,
            settings.path
        )
    }

    fn branch(&self) -> Option<String> {
        Some(self.settings().branch.clone())
    }
}

/// A plain `users.yaml` file (`--desired FILE`); its revision is the content hash.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The file.
    pub path: PathBuf,
}

impl DesiredSource for FileSource {
    async fn load(&self) -> Result<(Revision, Vec<u8>), SourceError> {
        let path = self.path.clone();
        let bytes = tokio::task::spawn_blocking(move || read_file(&path))
            .await
            .map_err(|e| SourceError::File {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| SourceError::File {
                path: self.path.clone(),
                source,
            })?;
        let hash = content_hash(&bytes);
        let revision = Revision {
            id: format!("sha256:{hash}"),
            short: format!("sha256:{}", &hash[..12]),
            author: String::new(),
            time: Utc::now(),
            subject: self.path.display().to_string(),
        };
        Ok((revision, bytes))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl AnySource {
    /// The source every command and the daemon read: `desired` (`--desired FILE`) when given,
    /// else `source.repo` at `source.branch`, mirrored under `state.dir`.
    pub fn choose(
        desired: Option<&std::path::Path>,
        config: &crate::config::Config,
    ) -> Result<AnySource, SourceError> {
        match desired {
            Some(path) => {
                if config.source.verify.is_on() {
                    tracing::warn!(
                        file = %path.display(),
                        "source.verify does not apply to --desired FILE: the file is used unchecked"
                    );
                }
                Ok(AnySource::File(FileSource {
                    path: path.to_owned(),
                }))
            }
            None => {
                let settings = super::GitSettings::from_config(&config.source)
                    .ok_or(SourceError::NotConfigured)?;
                Ok(AnySource::Git(
                    GitSource::new(settings, config.state.dir.join("mirror"))
                        .with_verify(config.source.verify.clone()),
                ))
            }
        }
    }
}

/// Either source, chosen at start-up.
#[derive(Debug)]
pub enum AnySource {
    /// `source.repo` at `source.branch`.
    Git(GitSource),
    /// `--desired FILE`.
    File(FileSource),
}

impl DesiredSource for AnySource {
    async fn load(&self) -> Result<(Revision, Vec<u8>), SourceError> {
        match self {
            AnySource::Git(git) => git.load().await,
            AnySource::File(file) => file.load().await,
        }
    }

    fn describe(&self) -> String {
        match self {
            AnySource::Git(git) => git.describe(),
            AnySource::File(file) => file.describe(),
        }
    }

    fn branch(&self) -> Option<String> {
        match self {
            AnySource::Git(git) => git.branch(),
            AnySource::File(file) => file.branch(),
        }
    }
}
