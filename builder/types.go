package builder

import v1 "github.com/google/go-containerregistry/pkg/v1"

type (
	v1Hash = v1.Hash
	v1Desc = v1.Descriptor
)
