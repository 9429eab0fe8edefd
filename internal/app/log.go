package app

import (
	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/config"
)

// LogOptions configures zap: JSON by default, console with --dev, and the
// verbosity of --log-level.
func LogOptions(cfg config.Common) []zap.Opts {
	return []zap.Opts{
		zap.UseDevMode(cfg.Dev),
		zap.Level(zapcore.Level(-cfg.LogLevel)),
		zap.StacktraceLevel(zapcore.PanicLevel),
	}
}
