package store

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// OnQueue has fn told, each time a script of s joins the queue of a round
// trip under way, how many wait in it.
func OnQueue(s *RedisSchedule, fn func(queued int)) {
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	s.batch.onQueue = fn
}

// LoadScheduleScripts loads the schedule's scripts into every primary
// behind client, so that a test that counts round trips counts no
// NOSCRIPT.
func LoadScheduleScripts(ctx context.Context, client redis.UniversalClient) error {
	for _, s := range []*redis.Script{reserveScript, confirmScript, dropScript} {
		if err := s.Load(ctx, client).Err(); err != nil {
			return err
		}
	}
	return nil
}
